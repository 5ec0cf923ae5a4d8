"""Imports follow the data: schemas -> models -> stream. models/ is pure."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE_FORBIDDEN = {"faust", "aiokafka", "asyncio", "mode", "launchpulse.stream", "prometheus_client", "aiohttp",
                  "subprocess", "socket"}


def _imports(path: Path):
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import stays inside the package
                yield f".{node.module or ''}", node.lineno
            else:
                yield node.module, node.lineno


def _env_reads(path: Path):
    src = path.read_text("utf-8")
    return [w for w in ("os.environ", "getenv", "os.getenv") if w in src]


def test_models_are_pure():
    for f in sorted((ROOT / "models").glob("*.py")):
        for mod, line in _imports(f):
            top = mod.split(".")[0] if not mod.startswith(".") else mod
            assert top not in PURE_FORBIDDEN and not any(mod == b or mod.startswith(b + ".") for b in PURE_FORBIDDEN), \
                f"{f.name}:{line} imports {mod}; models/ must not do I/O"
        assert not _env_reads(f), f"{f.name} reads the environment"


def test_schemas_know_only_the_data():
    for f in sorted((ROOT / "schemas").glob("*.py")):
        for mod, line in _imports(f):
            assert not mod.startswith(("launchpulse.models", "launchpulse.stream", "faust", "aiokafka")), \
                f"{f.name}:{line} imports {mod}; schemas/ must not depend on later layers"
        assert not _env_reads(f), f"{f.name} reads the environment"


def test_models_do_not_import_stream():
    for f in sorted((ROOT / "models").glob("*.py")):
        for mod, line in _imports(f):
            assert not mod.startswith("launchpulse.stream"), f"{f.name}:{line} imports {mod}"


def test_only_settings_reads_the_environment():
    readers = [f.name for f in sorted((ROOT / "stream").glob("*.py"))
               if "os.environ" in f.read_text() or "getenv" in f.read_text()]
    assert set(readers) <= {"settings.py", "cli.py"}, readers


def test_faust_app_importable():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import launchpulse.stream.faust_app as m; print(type(m.app).__name__)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "App"


def test_cli_help_and_bad_arguments():
    import subprocess
    import sys

    for cmd in ([], ["demo"], ["broker"], ["worker"], ["replay"]):
        out = subprocess.run([sys.executable, "-m", "launchpulse.stream.cli", *cmd, "--help"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "usage" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "launchpulse.stream.cli", "worker", "--web-port", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "web-port" in bad.stderr
