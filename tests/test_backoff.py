from asgimesh._backoff import ReconnectBackoff, full_jitter


def test_backoff_grows_to_the_cap_with_full_jitter_and_resets() -> None:
    backoff = ReconnectBackoff(0.1, 1.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.next_delay() == 0.1
    assert ReconnectBackoff(0.1, 1.0, rand=lambda: 0.0).next_delay() == 0.0


def test_full_jitter_scales_the_ceiling_and_survives_huge_attempts() -> None:
    assert full_jitter(3, 0.05, 10.0, lambda: 0.5) == 0.1
    assert full_jitter(10_000, 0.05, 2.0, lambda: 1.0) == 2.0
    assert full_jitter(0, 0.05, 2.0, lambda: 1.0) == 0.05
