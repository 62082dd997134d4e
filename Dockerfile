# syntax=docker/dockerfile:1
# The consent-ledger API server.
#   docker build -t consent-ledger:0.1.0 .
#   docker run --rm -v ledger-home:/var/lib/consent-ledger consent-ledger:0.1.0 init --origin example.com/consent
#   docker run -d -p 8000:8000 -v ledger-home:/var/lib/consent-ledger consent-ledger:0.1.0
# With PostgreSQL, use docker-compose.yml; see docs/PRODUCTION.md.

# --- build: install the project into a self-contained virtualenv ------------------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/consent-ledger
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY api ./api
COPY cli ./cli
RUN /opt/consent-ledger/bin/pip install .

# --- runtime: the virtualenv, a non-root user, and the key directory ------------------------
FROM python:3.11.11-slim-bookworm

ENV PATH=/opt/consent-ledger/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONSENT_LEDGER_HOME=/var/lib/consent-ledger

# CONSENT_LEDGER_HOME holds the signing key and the erasure secret: it must be
# a volume that is backed up (losing it loses the ability to sign and to
# recognise erased subjects), and only the service user may read it.
RUN groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid ledger --no-create-home \
       --home-dir /var/lib/consent-ledger --shell /usr/sbin/nologin ledger \
    && install -d -m 0700 -o ledger -g ledger /var/lib/consent-ledger

COPY --from=build /opt/consent-ledger /opt/consent-ledger

USER 10001:10001
WORKDIR /var/lib/consent-ledger
VOLUME ["/var/lib/consent-ledger"]
EXPOSE 8000

# Liveness only (no curl in slim images; Python is there). /readyz also checks
# the database and the key, and is what a load balancer should poll.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["consent-ledger"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
