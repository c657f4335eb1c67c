"""Engine tests: the ``slow`` marker (also registered in pyproject.toml, so this directory runs on its own)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running engine tests (real model, long prompts)")
