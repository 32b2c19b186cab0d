"""A mock OpenAI/Anthropic provider for tests, benchmarks and ``tollway dev`` without internet.

Usage::

    runner = await serve(MockSettings(port=0))
    url = base_url(runner)          # e.g. http://127.0.0.1:41234 (OpenAI SDK: url + "/v1")
    ...
    await runner.cleanup()
"""

from .app import base_url, create_app, run, serve
from .settings import MockSettings

__all__ = ["MockSettings", "base_url", "create_app", "run", "serve"]
