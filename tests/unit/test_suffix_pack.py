"""pack_suffixes: one row per user, each scenario's real tokens back to back, and the <USER_EMB> gather index."""
import pytest

torch = pytest.importorskip("torch")
from training.model.suffix import SuffixBatch, pack_suffixes  # noqa: E402

pytestmark = pytest.mark.model


def suffixes(lengths: list[int], side: str) -> SuffixBatch:
    """Scenarios of the given real lengths padded to the longest; <USER_EMB> is each one's last real token."""
    width = max(lengths)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    emb_pos = []
    for i, n in enumerate(lengths):
        off = width - n if side == "left" else 0
        valid[i, off:off + n] = True
        emb_pos.append(off + n - 1)
    ids = torch.arange(len(lengths) * width).view(len(lengths), width)  # a distinct id per slot
    emb_pos_t = torch.tensor(emb_pos)
    return SuffixBatch(ids=ids, valid=valid, emb_pos=emb_pos_t, labels=torch.full_like(ids, -100),
                       prompt_start=emb_pos_t.clone(), prompts=[None] * len(lengths))


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_layout_gathers_each_scenarios_user_emb(side):
    suf = suffixes([3, 5, 2, 4, 1, 2], side)
    lay = pack_suffixes(suf, [1, 3, 2])  # user 0: scenario 0; user 1: 1-3; user 2: 4-5
    assert lay.valid.sum(dim=1).tolist() == [3, 11, 3]
    assert lay.seg[1].tolist() == [1] * 5 + [2] * 2 + [3] * 4
    assert lay.within[1].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3]
    assert (lay.seg[~lay.valid] == 0).all()
    # the packed tokens, in row-major order, are the real tokens scenario after scenario
    packed = torch.zeros(lay.valid.shape, dtype=torch.long)
    packed[lay.valid] = suf.ids[suf.valid]
    picked = packed[lay.gather_row, lay.gather_col]
    assert picked.tolist() == suf.ids[torch.arange(6), suf.emb_pos].tolist()
    assert lay.gather_row.tolist() == [0, 1, 1, 1, 2, 2]


def test_layout_must_cover_every_scenario():
    with pytest.raises(ValueError, match="5 scenarios in the layout for 6 suffixes"):
        pack_suffixes(suffixes([3, 5, 2, 4, 1, 2], "right"), [1, 2, 2])
