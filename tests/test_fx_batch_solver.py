"""The batch-size solver on hand-made peak functions (no simulation): the answer, and how many
peaks it asks for."""

import pytest

torch = pytest.importorskip("torch")

from training_profiler.fx_audit.batch_solver import batch_of, max_batch_size  # noqa: E402


def solve(peak, budget, known=None, limit=1 << 20):
    asked = []

    def peak_of(batch):
        asked.append(batch)
        return peak(batch)

    answer = max_batch_size(None, lambda batch: batch, budget, peak_of=peak_of, known=known, limit=limit)
    return answer, asked


def brute_force(peak, budget, limit=1 << 20):
    batch = 0
    while batch < limit and peak(batch + 1) <= budget:
        batch += 1
    return batch


def test_affine_peak_is_predicted_from_two_points_and_confirmed_by_two_runs():
    def peak(b):
        return 1000 + 37 * b

    answer, asked = solve(peak, 5000)
    assert answer == brute_force(peak, 5000) == 108
    assert asked == [1, 2, 108, 109]


def test_known_points_are_not_simulated_again():
    def peak(b):
        return 1000 + 37 * b

    answer, asked = solve(peak, 5000, known={1: peak(1)})
    assert (answer, asked) == (108, [2, 108, 109])
    # a known larger batch is the second point of the line: only the confirmation runs
    answer, asked = solve(peak, 5000, known={1: peak(1), 8: peak(8)})
    assert (answer, asked) == (108, [108, 109])


def test_answer_on_a_known_point_or_at_the_limit():
    def peak(b):
        return 100 * b

    assert solve(peak, 199, known={1: 100})[0] == 1
    assert solve(peak, 10**9, limit=64) == (64, [1, 2, 64])  # the limit fits: nothing above it is asked


def test_nothing_fits():
    answer, asked = solve(lambda b: 10_000 * b, 5000)
    assert (answer, asked) == (0, [1])
    assert solve(lambda b: 10_000 * b, 5000, known={1: 10_000}) == (0, [])


def test_non_affine_peak_falls_back_to_the_search_with_the_same_answer():
    def rounded(b):  # allocator-like rounding to 1000-byte blocks: the line from 1 and 2 is off
        return -(-(900 + 130 * b + 3 * b * b) // 1000) * 1000

    def quadratic(b):
        return 500 + b * b

    for peak, budget in ((rounded, 50_000), (quadratic, 40_000), (rounded, 7_000)):
        answer, asked = solve(peak, budget)
        assert answer == brute_force(peak, budget)
        assert len(asked) == len(set(asked))  # each batch asked once
        assert len(asked) < 30  # the search: secant steps, a bracket, bisection


def test_flat_peak_reaches_the_limit():
    answer, asked = solve(lambda b: 4000, 5000, limit=1000)
    assert answer == 1000


def test_batch_of_is_the_shared_leading_dimension_of_contiguous_tensors():
    tokens = torch.zeros(4, 16, dtype=torch.int64, device="meta")
    assert batch_of((tokens, torch.zeros(4, 3, device="meta"), 7, torch.tensor(2.0))) == 4
    assert batch_of((tokens, torch.zeros(5, 3, device="meta"))) is None
    assert batch_of((torch.zeros(16, 4, device="meta").t(),)) is None  # not what make_inputs builds
    assert batch_of((3,)) is None
