# syntax=docker/dockerfile:1
# One image for every Space template under spaces/. `python -m spaceserve.deploy.publish` writes the
# chosen template into the defaults of TEMPLATE and ENGINE below in the copy it uploads.
# A local build from the repository root passes them instead:
#   docker build --build-arg TEMPLATE=fallback -t spaceserve-fallback .
#   docker build --build-arg TEMPLATE=proxy --build-arg ENGINE=none -t spaceserve-proxy .
# ENGINE=none (proxy templates) never builds the llama-build stage: no compiler, no llama.cpp.
ARG TEMPLATE=primary
ARG ENGINE=llama

# -- llama-cpp-python compiled once into a wheel (model templates only) ----------------------
FROM python:3.11-slim-bookworm AS llama-build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
# The build must not use -march=native: the image is built on one machine and run on others,
# and an instruction the run host lacks kills the server with SIGILL. Spaces' CPU hardware runs
# on current x86-64 server CPUs (Intel Xeon, AMD EPYC), so the wheel assumes x86-64-v3: SSE4.2,
# AVX, AVX2, BMI2, FMA, F16C, which every Intel CPU since Haswell (2013) and every AMD CPU since
# Zen (2017) has, and which carries llama.cpp's fast quantized kernels. AVX-512 is left out:
# many of those hosts (AMD before Zen 4, some Intel generations) do not have it.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
COPY requirements.txt /tmp/requirements.txt
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
    "$(grep -i '^llama-cpp-python==' /tmp/requirements.txt)"

# -- what every template shares ---------------------------------------------------------------
FROM python:3.11-slim-bookworm AS base
ARG TEMPLATE
# Spaces run the container as UID 1000; HOME and the Hugging Face cache must be writable by it.
RUN useradd -m -u 1000 user && install -d -o 1000 -g 1000 /home/user/app
ENV HOME=/home/user \
    HF_HOME=/home/user/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPACE_TEMPLATE=${TEMPLATE} \
    HOST=0.0.0.0 \
    PORT=7860
WORKDIR /home/user/app
COPY requirements-base.txt ./
RUN pip install --no-cache-dir -r requirements-base.txt

# -- model templates: llama.cpp, and the GGUF baked into the image ----------------------------
FROM base AS engine-llama
# llama.cpp's CPU backend uses OpenMP threads; slim images lack the runtime library.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt ./
RUN --mount=type=bind,from=llama-build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels -r requirements.txt
USER 1000
# Only what the download needs, so a code change does not throw the model layer away.
COPY --chown=1000:1000 spaces/ spaces/
COPY --chown=1000:1000 spaceserve/__init__.py spaceserve/settings.py spaceserve/prefetch.py spaceserve/
COPY --chown=1000:1000 spaceserve/engine/__init__.py spaceserve/engine/source.py spaceserve/engine/
# The GGUF goes into HF_HOME in the image, so a restart or a wake-up from sleep does not fetch it
# again. A gated model reads the Space secret HF_TOKEN here. Never fails the build: without the
# Hub the server downloads at start-up instead, with progress in the logs.
RUN --mount=type=secret,id=HF_TOKEN,mode=0444,required=false python -m spaceserve.prefetch

# -- proxy templates: nothing more ------------------------------------------------------------
FROM base AS engine-none

# -- the app ------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM engine-${ENGINE} AS app
USER 1000
WORKDIR /home/user/app
COPY --chown=1000:1000 app.py ./
COPY --chown=1000:1000 spaceserve/ spaceserve/
COPY --chown=1000:1000 spaces/ spaces/
EXPOSE 7860
# /health answers 503 while the model loads; the check passes then too (see spaceserve.healthcheck),
# so only a failed load or a dead server makes the container unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "spaceserve.healthcheck"]
CMD ["python", "app.py"]
