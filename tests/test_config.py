"""Every setting has an environment variable, help text, and a line in the README."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kernelagent.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme():
    readme = README.read_text()
    for field in dataclasses.fields(Settings):
        assert field.metadata["env"].startswith("KERNELAGENT_") or field.metadata["env"] in {
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
        }
        assert field.metadata["help"]
        assert f"`{field.metadata['env']}`" in readme, f"{field.metadata['env']} not in README"


def test_environment_overrides_defaults_and_flags_override_environment():
    settings = Settings.from_env(
        {"KERNELAGENT_POOL_SIZE": "0", "KERNELAGENT_PORT": "9000", "KERNELAGENT_DATA_DIR": "/x"},
        port=9100,
    )
    assert settings.pool_size == 0
    assert settings.port == 9100
    assert settings.data_dir == Path("/x")
    assert Settings.from_env({"KERNELAGENT_UNSAFE_NO_SANDBOX": "yes"}).unsafe_no_sandbox is True


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="KERNELAGENT_POOL_SIZE='many' is not a valid int"):
        Settings.from_env({"KERNELAGENT_POOL_SIZE": "many"})


def test_provisioner_config_carries_the_limits():
    config = Settings(
        memory_limit=512, runtime_dir="/tmp/ka", kernel_image="img:1", cpu_limit=0.5
    ).provisioner_config()
    for section in ("BubblewrapProvisioner", "DockerProvisioner"):
        assert config[section]["memory_limit"] == 512
        assert config[section]["runtime_dir"] == "/tmp/ka"
    assert config["DockerProvisioner"]["image"] == "img:1"
    assert config["DockerProvisioner"]["cpus"] == 0.5


def test_the_sandbox_picks_its_kernelspec_and_refuses_unknown_ones():
    assert Settings().kernelspec == "kernelagent-python3"
    assert Settings(sandbox="docker").kernelspec == "kernelagent-python3-docker"
    assert Settings(sandbox="docker", kernel_name="mine").kernelspec == "mine"
    assert Settings(sandbox="docker", unsafe_no_sandbox=True).kernelspec == "python3"
    with pytest.raises(ValueError, match="KERNELAGENT_SANDBOX='firecracker' is not one of"):
        Settings.from_env({"KERNELAGENT_SANDBOX": "firecracker"})
