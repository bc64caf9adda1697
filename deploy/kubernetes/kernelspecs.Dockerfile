# The kernelspecs image of Enterprise Gateway's Helm chart (kernelspecs.image in
# enterprise-gateway-values.yaml): at each gateway start, the chart's init container copies its
# /kernels into the gateway's kernelspec directory, which then holds this kernelspec alone.
#
#   docker build -f deploy/kubernetes/kernelspecs.Dockerfile -t kernelagent/kernelspecs:latest .
#
# The kernelspec is kernel.json and the kernel's pod template (deploy/kubernetes/kernelspecs), plus
# Enterprise Gateway's own Kubernetes launcher, taken from the gateway image of the same release:
# the launcher renders the template beside it and creates the pod.
ARG GATEWAY_IMAGE=elyra/enterprise-gateway:3.3.0

FROM ${GATEWAY_IMAGE} AS gateway

# The init container runs `cp -r /kernels /usr/local/share/jupyter`: any small image with cp.
FROM alpine:3.20
COPY --from=gateway \
    /usr/local/share/jupyter/kernels/python_kubernetes/scripts/launch_kubernetes.py \
    /kernels/kernelagent-python3-k8s/scripts/launch_kubernetes.py
COPY deploy/kubernetes/kernelspecs/ /kernels/
# The gateway runs as its own user (jovyan), which must read the copies.
RUN chmod -R a+rX /kernels
