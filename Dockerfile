# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The locked versions with their hashes, in a layer of their own that only a
# change of the lock rebuilds.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# The package carries its migrations (app._migrations), so nothing of the
# source tree is needed beside it at run time.
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && pip check

FROM python:3.11-slim
# Production sets PSE_REFUNDS_DATABASE_URL (and a config file). Without a
# database URL the service uses an embedded PostgreSQL keeping its data in
# /srv/.pse-refunds: the folder must belong to the user the service runs as.
RUN useradd --create-home --uid 10001 refunds && mkdir -p /srv && chown refunds:refunds /srv
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PSE_REFUNDS_LOG_FORMAT=json
USER refunds
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
ENTRYPOINT ["pse-refunds"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
