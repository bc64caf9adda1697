"""Starts kernelagent's kernel image as a container for Jupyter Enterprise Gateway.

Enterprise Gateway's DockerProcessProxy runs this with the gateway's Python and then finds the
container by its ``kernel_id`` label; the image's bootstrap script starts the kernel and sends its
ports back to ``--response-address``. Unlike a stock launcher, the container gets only what the
kernel needs (no copy of the gateway's environment, no Docker socket) and is locked down as
kernelagent's own Docker sandbox locks it: a read-only root, no capabilities, no privilege gain,
limits on memory, CPUs and processes, and sized tmpfs for what it may write. It cannot have
``--network none``: the gateway reaches the kernel's ports over the network named by
``EG_DOCKER_NETWORK``, a user-defined bridge with nothing else on it.

Limits come from the kernel's environment (the kernelspec's ``env`` or the client's
``KERNEL_*``): KERNEL_MEMORY (default 2g), KERNEL_CPUS (1), KERNEL_PIDS (512),
KERNEL_WORKSPACE_SIZE (1g; the workspace is a tmpfs, counted in the memory limit).
"""

import argparse
import os
import sys

import docker

# What the image's bootstrap script reads; nothing else of the gateway's environment goes in.
PASSED = ("KERNEL_USERNAME", "KERNEL_LANGUAGE", "KERNEL_SPARK_CONTEXT_INIT_MODE")


def container_options(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The container's options, from the launcher's arguments and the kernel's environment."""
    uid, gid = env.get("KERNEL_UID", "61000"), env.get("KERNEL_GID", "61000")
    owned = f"uid={uid},gid={gid},mode=0700"
    memory = env.get("KERNEL_MEMORY", "2g")
    environment = {name: env[name] for name in PASSED if name in env}
    environment.update(
        KERNEL_ID=args.kernel_id,
        PORT_RANGE=args.port_range,
        RESPONSE_ADDRESS=args.response_address,
        PUBLIC_KEY=args.public_key,
    )
    return {
        "name": f"{env.get('KERNEL_USERNAME', 'kernel')}-{args.kernel_id}",
        "labels": {"kernel_id": args.kernel_id, "component": "kernel", "app": "kernelagent"},
        "environment": environment,
        "user": f"{uid}:{gid}",
        "network": env.get("EG_DOCKER_NETWORK", "kernelagent-kernels"),
        "detach": True,
        "auto_remove": True,
        "init": True,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(float(env.get("KERNEL_CPUS", "1")) * 1e9),
        "pids_limit": int(env.get("KERNEL_PIDS", "512")),
        "tmpfs": {
            "/tmp": f"size=256m,{owned}",
            "/dev/shm": f"size=256m,{owned}",
            "/home/sandbox": f"size=64m,{owned}",
            "/workspace": f"size={env.get('KERNEL_WORKSPACE_SIZE', '1g')},{owned}",
        },
        "working_dir": "/workspace",
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-id", required=True)
    parser.add_argument("--port-range", default="0..0")
    parser.add_argument("--response-address", required=True)
    parser.add_argument("--public-key", required=True)
    args = parser.parse_args(argv)
    image = os.environ.get("KERNEL_IMAGE")
    if not image:
        sys.exit("KERNEL_IMAGE is not set: the kernelspec's process_proxy config names the image")
    docker.from_env().containers.run(image, **container_options(args, dict(os.environ)))


if __name__ == "__main__":
    main(sys.argv[1:])
