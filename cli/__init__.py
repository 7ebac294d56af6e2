"""The ``privacy-pipeline`` command line: offline commands in ``main``, Kafka ones in ``live``."""
