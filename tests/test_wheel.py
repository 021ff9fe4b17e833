"""The pip user's journey (issue 15): build the wheel, install it away from the repository, train.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``) from a copy
of ``pyproject.toml``, ``README.md`` and ``src/`` in a temporary folder, so no ``build/``,
``dist/`` or ``*.egg-info`` appears in the repository. It is installed with ``pip install
--target DIR``; every command then runs from another temporary folder with ``PYTHONPATH=DIR``
over this environment's dependencies, and checks that ``hub_cutinit`` is imported from DIR.
From there: the entry points (``python -m hub_cutinit.train``, the ``hub-cutinit`` console
script, ``accelerate launch -m``), 2 training steps on the built-in dataset, a reload with timm
``local-dir:`` in a process that never imports hub_cutinit, and ``hub-cutinit card``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SRC = REPO / "src" / "hub_cutinit"
#: Small enough for two CPU steps in seconds: a real timm model, small BYOL heads.
TRAIN_FLAGS = [
    "--backbone", "resnet10t", "--image-size", "32", "--batch-size", "8", "--max-steps", "2",
    "--set", "proj_hidden_dim=32", "proj_dim=16", "pred_hidden_dim=8",
    "--eval-max-samples", "64", "--knn-k", "10", "--no-baselines", "--log-every", "1",
]  # fmt: skip


def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"$', text, re.M).group(1)  # [project] version


class Installed:
    """A wheel installed with ``pip install --target``; runs commands as a pip user would."""

    def __init__(self, wheel: Path, target: Path, workdir: Path) -> None:
        self.wheel, self.target, self.workdir = wheel, target, workdir
        self.env = {
            **os.environ,
            "PYTHONPATH": str(target),  # replaces, never extends, the caller's PYTHONPATH
            "OMP_NUM_THREADS": "1",
            "HF_HOME": str(workdir.parent / "hf-home"),  # no user config, cache or token
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TQDM_DISABLE": "1",
        }

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the work folder; fails the test with its output on a non-zero exit."""
        proc = subprocess.run(
            [str(a) for a in args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run_many(
        self, **commands: tuple[str | Path, ...]
    ) -> dict[str, subprocess.CompletedProcess]:
        """Run independent commands at once (each one imports torch: seconds); no exit check."""
        procs = {
            name: subprocess.Popen(
                [str(a) for a in args],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, args in commands.items()
        }
        try:
            outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
            return {
                name: subprocess.CompletedProcess(p.args, p.returncode, *outputs[name])
                for name, p in procs.items()
            }
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def python(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, *args, check=check)

    @property
    def console_script(self) -> Path:
        """The ``hub-cutinit`` script pip wrote from the wheel's entry points."""
        return self.target / "bin" / "hub-cutinit"


def _build_wheel(tmp: Path) -> Path:
    """Build the wheel offline from a copy of the sources (no build artefacts in the repo)."""
    tree = tmp / "source"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(
        REPO / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, tree],
        check=True,
        cwd=tmp,
        capture_output=True,
    )
    (wheel,) = dist.glob("hub_cutinit-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q",
         "--no-deps", "--no-index", "--target", target, wheel],
        check=True,
        capture_output=True,
    )  # fmt: skip
    workdir = tmp / "work"
    workdir.mkdir()
    return Installed(wheel, target, workdir)


@pytest.fixture(scope="module")
def trained(installed: Installed) -> Path:
    """2 training steps of BYOL on the built-in dataset through ``python -m hub_cutinit.train``."""
    out = installed.workdir / "byol-out"
    proc = installed.python(
        "-m", "hub_cutinit.train", "byol", *TRAIN_FLAGS, "--output-dir", out.name
    )
    assert "saved to byol-out" in proc.stdout, proc.stdout
    return out


def test_wheel_ships_every_package_file_and_the_console_script(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(
            whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    source_files = {
        p.relative_to(PACKAGE_SRC.parent).as_posix()
        for p in PACKAGE_SRC.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert source_files - names == set(), "files in src/hub_cutinit missing from the wheel"
    assert "hub_cutinit/templates/model_card.md" in names
    assert any(n.startswith("hub_cutinit/datasets/fashion_mnist/train-") for n in names)
    assert re.search(r"^hub-cutinit\s*=\s*hub_cutinit\.cli:main$", entry_points, re.M)
    assert installed.console_script.is_file()


def test_entry_points_and_version_from_the_wheel(installed: Installed) -> None:
    from hub_cutinit import list_methods
    from hub_cutinit._version import FALLBACK_VERSION

    version = _pyproject_version()
    assert FALLBACK_VERSION == version, "update FALLBACK_VERSION in src/hub_cutinit/_version.py"
    script, train = installed.console_script, ("-m", "hub_cutinit.train")
    code = "import hub_cutinit, json; print(json.dumps([hub_cutinit.__file__, hub_cutinit.__version__]))"
    got = installed.run_many(
        imported=(sys.executable, "-c", code),
        help=(sys.executable, *train, "--help"),
        bad_method=(sys.executable, *train, "bayol"),
        version=(script, "--version"),
        subcommand=(script, "train", "simclr", "--help"),
        # accelerate's launcher runs `python -m hub_cutinit.train ...` in each process.
        accelerate=(
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
            *train, "byol", "--help",
        ),
    )  # fmt: skip
    for name, proc in got.items():
        expected_rc = 2 if name == "bad_method" else 0
        assert proc.returncode == expected_rc, f"{name}: {proc.args}\n{proc.stdout}\n{proc.stderr}"
    file, installed_version = json.loads(got["imported"].stdout)
    assert Path(file).is_relative_to(installed.target), f"imported {file}, not the wheel"
    assert installed_version == version
    assert got["version"].stdout.strip() == f"hub-cutinit {version}"

    assert all(m in got["help"].stdout for m in list_methods()), got["help"].stdout
    assert "python -m hub_cutinit.train METHOD --help" in got["help"].stdout
    assert got["bad_method"].returncode == 2
    expected = "unknown method 'bayol'; choose one of: " + ", ".join(list_methods())
    assert expected in got["bad_method"].stderr

    flags = got["subcommand"].stdout
    assert flags.startswith("usage: hub-cutinit train simclr") and "--max-steps" in flags
    assert got["accelerate"].stdout.startswith("usage: python -m hub_cutinit.train byol")


def test_trained_model_loads_with_timm_alone(installed: Installed, trained: Path) -> None:
    for name in ("config.json", "model.safetensors", "ssl_heads.safetensors", "README.md"):
        assert (trained / name).is_file(), name
    umask = os.umask(0)
    os.umask(umask)
    assert (trained / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    config = json.loads((trained / "config.json").read_text())
    assert config["hub_cutinit"]["versions"]["hub_cutinit"] == _pyproject_version()

    code = textwrap.dedent(f"""
        import json, sys, timm, torch
        from safetensors.torch import load_file
        model = timm.create_model("local-dir:{trained}", pretrained=True).eval()
        saved = load_file("{trained / "model.safetensors"}")
        same = all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
        with torch.no_grad():
            feats = model(torch.randn(2, 3, 32, 32))
        print(json.dumps({{"shape": list(feats.shape), "finite": bool(feats.isfinite().all()),
                          "same": same, "hub_cutinit": "hub_cutinit" in sys.modules}}))
    """)
    got = json.loads(installed.python("-c", code).stdout)
    assert got == {
        "shape": [2, config["num_features"]],
        "finite": True,
        "same": True,
        "hub_cutinit": False,
    }


def test_card_renders_from_the_installed_template(installed: Installed, trained: Path) -> None:
    (trained / "README.md").unlink()
    installed.run(installed.console_script, "card", trained)
    card = (trained / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: timm" in card
    assert "# byol-resnet10t-cut9" in card
    assert "{{" not in card, "unrendered template placeholder"
