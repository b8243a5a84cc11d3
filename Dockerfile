# The serving image: `isnet serve` on the CPU, for SageMaker or any container host.
# No PyTorch and no build tools: serving needs only the runtime libraries. OpenVINO artifacts
# need `--build-arg EXTRA=openvino`.
#   docker build -t isnet-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/artifact:/opt/ml/model:ro" isnet-serve serve
FROM python:3.11-slim

ARG EXTRA=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ISNET_SERVE_HOST=0.0.0.0

RUN pip install numpy onnxruntime opencv-python-headless pillow pyyaml starlette uvicorn "python-multipart>=0.0.13" $EXTRA

COPY . /tmp/isnet-src
# --no-deps: isnet's own dependencies include PyTorch and the build tools, which serving never imports.
RUN pip install --no-deps /tmp/isnet-src && rm -rf /tmp/isnet-src

# SageMaker runs `docker run IMAGE serve`, sends requests to port 8080 and mounts the model at
# /opt/ml/model (the default of --model).
EXPOSE 8080
ENTRYPOINT ["isnet"]
CMD ["serve"]
