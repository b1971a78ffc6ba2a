# The unlearnd image: API (`serve`), worker (`worker`), migrations (`db upgrade`) and the ML CLI.
# Installed editable from /srv/unlearnd so `unlearnd db upgrade` finds migrations/ beside app/.
# TORCH_INDEX picks torch's build: cpu (the default, small) or a CUDA one for the GPU worker, e.g.
#   docker build --build-arg TORCH_INDEX=cu130 -t unlearnd:gpu .
# (the host needs the NVIDIA driver and container toolkit; the CUDA runtime ships inside torch's wheels)
FROM python:3.11-slim
ARG TORCH_INDEX=cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UNLEARND_HOME=/var/lib/unlearnd \
    PIP_NO_CACHE_DIR=1
WORKDIR /srv/unlearnd

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# torch from its own index (2.14.1+cpu or +cu130 satisfies the ==2.14.1 pin): the CPU image stays small
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
        -e . \
    && useradd --system --home-dir "$UNLEARND_HOME" --create-home unlearnd

USER unlearnd
VOLUME ["/var/lib/unlearnd"]
EXPOSE 8000
# the first start trains and calibrates a model before it answers (seconds for digits, minutes for a CIFAR-size
# model): readiness is /readyz, this is liveness, and it gets a start period
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
ENTRYPOINT ["unlearnd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
