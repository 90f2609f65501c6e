"""Test-wide settings: tiny models everywhere, so torch runs single-threaded with passive OpenMP waiting."""

from vplan.utils.openmp import choose_wait_policy

choose_wait_policy()  # before torch loads, as the CLI does

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models are op-overhead bound: one thread is faster, and two spin-wait on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread_after_each_test():
    """Commands set the thread count their config asks for (a benchmark's 2): the next test gets one again."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def local_servers_without_a_proxy(monkeypatch):
    """The tests' fake endpoints listen on this machine: a proxy set in the environment (a developer's, a CI
    runner's) must not carry their requests, as the HTTP client would."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
