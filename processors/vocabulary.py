"""The fixed vocabulary of the design (contract): purposes, legal bases, actions, reasons."""

from __future__ import annotations

from typing import Final, Literal

PURPOSES: Final = frozenset(
    {
        "account",
        "contract",
        "bookkeeping",
        "direct_marketing",
        "analytics",
        "personalization",
        "business_relationship",
        "prospecting",
        "credit_assessment",
        "fraud_prevention",
        "surveys",
        "legal_claims",
    }
)

LegalBasis = Literal["consent", "contract", "legal_obligation", "legitimate_interest"]
ErasureAction = Literal["erase", "anonymize", "restrict"]
Reason = Literal[
    "retention_expired",
    "erasure_request",
    "consent_withdrawn",
    "objection",
    "account_closed",
    "relationship_ended",
    "restriction_request",
]
# Why a purpose is listed in `suppressed`: the reasons above plus `no_consent`
# (a purpose resting on consent when none is on record).
SuppressionReason = Literal["consent_withdrawn", "objection", "restriction_request", "no_consent"]

EventType = Literal["customer", "order", "click", "consent", "privacy_request"]
EVENT_TYPES: Final = frozenset({"customer", "order", "click", "consent", "privacy_request"})

CUSTOMER_ACTIONS: Final = frozenset(
    {"created", "updated", "contacted", "closed", "relationship_ended"}
)
ROLES: Final = frozenset({"customer", "prospect", "contact_person", "supplier"})
ORDER_ACTIONS: Final = frozenset({"placed", "invoiced", "delivered", "returned", "complaint"})
CONSENT_ACTIONS: Final = frozenset({"grant", "withdraw", "object"})
CHANNELS: Final = frozenset({"email", "sms", "post", "phone", "web"})
RIGHTS: Final = frozenset(
    {"erasure", "access", "rectification", "restriction", "portability", "objection"}
)
