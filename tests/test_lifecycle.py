"""Exiting with a lens run in flight ends cleanly: the run is cancelled between two denoiser calls, its thread
joined, the exit status is the caller's own, and one line says what was cancelled — never SIGABRT ("terminate
called without an active exception"). Each form runs in a subprocess, as a user's script or kernel would."""

import subprocess
import sys
import textwrap

import pytest

# slow: each form starts an interpreter and loads the toy model; one xdist group: under `pytest -n 2` the forms run one
# after another on one worker, so no two of them race for the cores while they wait on a run in flight
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lifecycle")]

ABORT = "terminate called without an active exception"
LONG_RUN = 'seeds="0,1,2,3", num_inference_steps=200'


def run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def python(code: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", textwrap.dedent(code)])


def assert_clean(done: subprocess.CompletedProcess, status: int = 0) -> None:
    assert ABORT not in done.stderr and done.returncode == status, (done.returncode, done.stderr[-2000:])
    assert "difflens: cancelled 1 lens run(s) still going at exit" in done.stderr, done.stderr[-2000:]


def test_a_run_in_a_thread_is_cancelled_at_exit():
    assert_clean(
        python("""
        import threading, time
        import difflens_widgets as dl
        lens = dl.Lens("toy")
        job = lambda: lens.run("a red circle", seeds=[0, 1, 2, 3], num_inference_steps=200)
        threading.Thread(target=job, daemon=True).start()
        while not lens.running:
            time.sleep(0.05)
        time.sleep(1)
    """)
    )


def test_a_plain_thread_does_not_keep_the_interpreter_waiting_and_the_exit_status_is_kept():
    done = python("""
        import sys, threading, time
        import difflens_widgets as dl
        lens = dl.Lens("toy")
        threading.Thread(target=lambda: lens.run("a red circle", seeds=[0, 1, 2, 3], num_inference_steps=200)).start()
        while not lens.running:
            time.sleep(0.05)
        sys.exit(3)
    """)
    assert_clean(done, status=3)


def test_a_running_dashboard_is_cancelled_at_exit():
    assert_clean(
        python(f"""
        import time
        import difflens_widgets as dl
        dash = dl.LensDashboard("toy", {LONG_RUN})
        dash.run()
        time.sleep(2)
    """)
    )


def test_the_magic_then_exit(tmp_path):
    script = tmp_path / "magic.ipy"
    script.write_text(
        '%load_ext difflens\n%difflens "a red circle" --seeds 0,1,2,3 --steps 200\nimport time; time.sleep(2)\n'
    )
    assert_clean(run([sys.executable, "-m", "IPython", "--no-banner", str(script)]))


def test_a_kernel_shut_down_with_a_dashboard_running(tmp_path):
    """nbclient executes a notebook whose last cell starts a dashboard, then shuts the kernel down."""
    import nbformat

    book = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import difflens_widgets as dl"),
            nbformat.v4.new_code_cell(f'dash = dl.LensDashboard("toy", {LONG_RUN}); dash.run(); dash'),
        ]
    )
    path = tmp_path / "book.ipynb"
    nbformat.write(book, path)
    done = python(f"""
        import nbformat
        from nbclient import NotebookClient
        book = nbformat.read({str(path)!r}, as_version=4)
        NotebookClient(book, timeout=120, kernel_name="python3", shutdown_kernel="graceful").execute()
        print("executed")
    """)
    assert "executed" in done.stdout and done.returncode == 0 and ABORT not in done.stderr, done.stderr[-2000:]


def test_a_run_queued_behind_a_background_load_never_starts_at_exit():
    """Run pressed while the model loads, then exit at once: the run would start after the exit hook had looked."""
    assert_clean(
        python(f"""
        import difflens_widgets as dl
        dash = dl.LensDashboard("toy", background_load=True, {LONG_RUN})
        dash.run()
    """)
    )
