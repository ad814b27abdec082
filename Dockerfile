# Image for compose.yaml: one image, three services (the command picks which).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY events events
COPY saga_kit saga_kit
COPY order_svc order_svc
COPY inventory_svc inventory_svc
COPY payment_svc payment_svc
COPY sagastack sagastack
RUN pip install --no-cache-dir --no-deps .
USER nobody
