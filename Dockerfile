# The privacy pipeline worker image (used by docker-compose.yml as the service
# `worker`). Build from the repository root:
#
#   docker build -t privacy-pipeline .
#   docker run --rm privacy-pipeline run --broker HOST:PORT --metrics-port 9108
#
# The project is installed as a regular (non-editable) package: the Avro
# schemas and the policy packs are package data of privacy_pipeline.schemas and
# privacy_pipeline.policies, so nothing is read from the source tree at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs (pyproject.toml names README.md as readme;
# each folder below is one subpackage of privacy_pipeline, see package-dir).
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY processors/ processors/
COPY streams/ streams/
COPY cli/ cli/
COPY demo/ demo/
COPY embedded_broker/ embedded_broker/
COPY sink/ sink/
COPY schemas/ schemas/
COPY policies/ policies/
RUN pip install . \
    && cd / && rm -rf /tmp/src

RUN useradd --create-home --uid 10001 --user-group app
USER 10001:10001
WORKDIR /home/app

# Prometheus metrics (--metrics-port).
EXPOSE 9108
ENTRYPOINT ["privacy-pipeline"]
CMD ["run"]
