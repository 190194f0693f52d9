"""User code that hangs (a reward function, a tool) costs one counted failure, never a hung run."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from medlab.rl.rewards import RewardSet, combine_rewards
from medlab.rl.timeout import CallTimeout, call_with_timeout
from medlab.rl.tools import Tool, _execute

RELEASE = threading.Event()  # lets the abandoned worker threads finish at the end of the module


@pytest.fixture(scope="module", autouse=True)
def _release_hung_threads():
    yield
    RELEASE.set()


def hangs(prompts, completions, **_):
    RELEASE.wait(30)
    return [1.0] * len(completions)


def ones(prompts, completions, **_):
    return [1.0] * len(completions)


def test_call_with_timeout_returns_raises_and_times_out():
    assert call_with_timeout(lambda a, b=0: a + b, 1.0, 2, b=3) == 5
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["x"], 1.0)
    t0 = time.perf_counter()
    with pytest.raises(CallTimeout):
        call_with_timeout(RELEASE.wait, 0.2, 30)
    assert time.perf_counter() - t0 < 2.0
    assert call_with_timeout(lambda: 7, None) == 7  # no limit


def test_call_with_timeout_keeps_the_callers_grad_mode():
    with torch.no_grad():
        assert call_with_timeout(torch.is_grad_enabled, 1.0) is False
    assert call_with_timeout(torch.is_grad_enabled, 1.0) is True


def test_a_hanging_reward_is_masked_and_counted_not_retried_per_sample():
    t0 = time.perf_counter()
    total, per_fn, stats = combine_rewards({"hang": (hangs, 1.0), "ok": (ones, 0.5)}, ["p"] * 4, ["c"] * 4,
                                           timeouts={"hang": 0.2, "ok": 0.2})
    assert time.perf_counter() - t0 < 2.0  # one timeout for the batch, not one per sample
    assert all(math.isnan(v) for v in per_fn["hang"].tolist())
    assert int(stats["reward/hang/failures"]) == 4 and int(stats["reward/hang/timeouts"]) == 1
    assert int(stats["reward/ok/timeouts"]) == 0
    assert total.tolist() == [0.5] * 4  # the masked reward contributes nothing; the others still count


def test_reward_set_reads_timeout_s_per_entry_and_does_not_bind_it():
    rs = RewardSet.from_config({"hang": {"_target_": f"{__name__}.hangs", "timeout_s": 0.1},
                                "acc": {"_target_": "exact_match"}}, timeout_s=42.0)
    assert rs.timeouts == {"hang": 0.1, "acc": 42.0}
    total, _, stats = rs(["q"], ["<answer>A</answer>"], answer=["A"])
    assert total.tolist() == [1.0] and int(stats["reward/hang/timeouts"]) == 1


def test_a_hanging_tool_becomes_an_error_observation():
    tool = Tool(name="slow", fn=lambda args: RELEASE.wait(30) and "never", timeout_s=0.2)
    t0 = time.perf_counter()
    text, ok = _execute({"name": "slow", "arguments": {}}, {"slow": tool})
    assert not ok and "timed out after 0.2 s" in text
    assert time.perf_counter() - t0 < 2.0
    assert _execute({"name": "fast", "arguments": {"q": 1}}, {"fast": Tool("fast", lambda a: f"got {a['q']}")}) == ("got 1", True)
