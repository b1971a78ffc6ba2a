# The unlearnd image: API (`serve`), worker (`worker`), migrations (`db upgrade`) and the ML CLI.
# Installed editable from /srv/unlearnd so `unlearnd db upgrade` finds migrations/ beside app/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UNLEARND_HOME=/var/lib/unlearnd \
    PIP_NO_CACHE_DIR=1
WORKDIR /srv/unlearnd

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# torch's CPU build (2.14.1+cpu satisfies the ==2.14.1 pin) instead of PyPI's multi-GB CUDA one
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple -e . \
    && useradd --system --home-dir "$UNLEARND_HOME" --create-home unlearnd

USER unlearnd
VOLUME ["/var/lib/unlearnd"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
ENTRYPOINT ["unlearnd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
