"""Two `comp tune` workers share one study on a real PostgreSQL server started on loopback."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` system user."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 with one database; stopped at teardown."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                    "install the postgresql package to run this test")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
    # not pytest's tmp_path: its parents are private to root and the server user must enter
    root = Path(tempfile.mkdtemp(prefix="comp-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    started = False
    try:
        r = subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "postgres",
                                            "-A", "trust", "-E", "UTF8", "--no-sync"]),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.skip(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=40")
        r = subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-o", opts, "-l", str(log),
                                            "-w", "-t", "60", "start"]),
                           capture_output=True, text=True, timeout=90)
        if r.returncode != 0:
            tail = log.read_text()[-300:] if log.exists() else r.stderr
            pytest.skip(f"PostgreSQL server did not start: {tail.strip()}")
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE comp_tune")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/comp_tune"
    finally:
        if started:
            subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study(postgres_url, small_comp, tmp_path):
    import optuna

    from comp.config.schema import DataConfig
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds
    from comp.workflows.tune import open_storage

    # the shared fold table exists before the workers start, as after `comp folds`
    cfg = DataConfig(dir=str(small_comp), folds=3)
    load_folds(load_competition(cfg), cfg)
    recipe = tmp_path / "tiny_lr.toml"
    recipe.write_text(
        'kind = "linear"\n[data]\nfolds = 3\n[linear]\nmin_df = 1\nchar_ngram = [1, 2]\n'
        '[tune]\n"linear.C" = {type = "float", low = 0.05, high = 20.0, log = true}\n',
        encoding="utf-8")
    env = dict(os.environ, COMP_QUIET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "comp", "tune", str(recipe), "--data", str(small_comp),
           "--trials", "3", "--storage", postgres_url, "--study", "shared"]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-2000:]
        assert sum(line.startswith("trial ") for line in out.splitlines()) == 3

    study = optuna.load_study(study_name="shared", storage=open_storage(postgres_url))
    trials = study.get_trials()
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    # workers started with the same seed still sample different points
    assert len({t.params["linear.C"] for t in trials}) == 6
    best = study.best_trial
    assert 0.5 < best.value <= 1.0 and best.value == max(t.value for t in trials)
    assert (tmp_path / "recipes" / "tuned" / "tiny_lr.toml").exists()
    dirs = sorted(p.name for p in (tmp_path / "runs" / "tune" / "shared").glob("trial_*"))
    assert dirs == [f"trial_{n}" for n in range(6)]
