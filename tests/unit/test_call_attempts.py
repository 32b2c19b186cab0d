"""CallAttempts: what Envoy says answered, and the failure shown instead of the final one."""

from __future__ import annotations

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc.attempts import CallAttempts

A = Backend(name="a", provider="openai", model="m", base_url="http://a.test/v1")
B = Backend(name="b", provider="anthropic", model="m", base_url="http://b.test")


def test_begin_and_final_set_the_backend_and_count_and_a_given_up_attempt_is_not_counted() -> None:
    attempts = CallAttempts()
    first = attempts.begin(A, 1, 0.0)
    assert (attempts.backend, attempts.count, attempts.latest) == (A, 1, first)
    attempts.begin(B, 2, 1.0)
    attempts.final(A, 2)
    assert (attempts.backend, attempts.count, attempts.reported) == (A, 2, 2)
    attempts.give_up()
    attempts.final(None, 3)  # the third never went out
    assert (attempts.backend, attempts.count) == (A, 2)


def test_an_earlier_rate_limit_is_shown_instead_of_a_final_server_error() -> None:
    attempts = CallAttempts()
    limited = attempts.begin(A, 1, 0.0)
    limited.status, limited.error_body = 429, b"{}"
    broken = attempts.begin(B, 2, 1.0)
    broken.status, broken.error_body = 503, b"{}"
    assert attempts.choose_replacement(503) is limited and attempts.replacement is limited
    assert CallAttempts().choose_replacement(200) is None


def test_renumbering_counts_the_retries_envoy_made_unseen() -> None:
    attempts = CallAttempts()
    only = attempts.begin(A, 1, 0.0)
    attempts.final(None, 3)
    assert attempts.renumber_latest() == 2 and only.number == 3
    assert attempts.renumber_latest() == 0
