# The unlearnd image: the CLI (train / unlearn / cache / bench / demo) on Python 3.11.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UNLEARND_HOME=/var/lib/unlearnd
WORKDIR /srv/unlearnd

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir . && useradd --system --home-dir "$UNLEARND_HOME" --create-home unlearnd

USER unlearnd
VOLUME ["/var/lib/unlearnd"]
ENTRYPOINT ["unlearnd"]
CMD ["demo"]
