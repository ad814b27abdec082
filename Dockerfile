# Image for compose.yaml: one image, three services (the command picks which).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
COPY events events
COPY saga_kit saga_kit
COPY order_svc order_svc
COPY inventory_svc inventory_svc
COPY payment_svc payment_svc
COPY payment_provider payment_provider
COPY sagastack sagastack
# the operator's command line: pyproject's `sagactl` script, which `pip install .` installs, imports it
COPY sagactl sagactl
# the runtime dependencies only (no test tools), at the versions the lock pins
RUN pip install --no-cache-dir --constraint requirements.lock .
# faust and the services write nothing under /app: state goes to a temporary directory
ENV SAGA_DATA_DIR=/tmp/saga-data
USER nobody
