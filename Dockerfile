# kdns: cluster DNS for Kubernetes. Build: docker build -t kdns .   Deploy: deploy/kdns.yaml
#
# Two stages on the same base, so wheel ABI and site-packages paths match: the builder builds
# wheels for kdns and every dependency and installs them into /install; the runtime stage copies
# /install over its /usr/local and has no compiler, no pip cache, no source tree.
# tests/test_dockerfile.py runs these steps in a venv (no Docker engine in CI).

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdns ./kdns
COPY zones ./zones
RUN pip wheel --wheel-dir /wheels .
RUN pip install --no-index --find-links /wheels --prefix /install kdns

FROM python:3.11-slim
# Unbuffered: log lines reach `kubectl logs` at once. No bytecode writes: the root filesystem
# is read-only in the pod (deploy/kdns.yaml), and the builder already compiled the .pyc files.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /install /usr/local
# Numeric, so the kubelet can check runAsNonRoot without an /etc/passwd lookup (CoreDNS does the
# same). Port 1053 needs no capability, so the pod drops ALL; the Service maps 53 -> 1053.
USER 65532:65532
WORKDIR /
EXPOSE 1053/udp 1053/tcp 8080
# Exec form: python is PID 1 and gets SIGTERM itself, which starts the lameduck.
ENTRYPOINT ["python", "-m", "kdns"]
CMD ["serve", "--in-cluster", "--listen", "0.0.0.0:1053", "--http", "0.0.0.0:8080"]
