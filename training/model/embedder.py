"""Q-Anchor model: user prefix of soft tokens -> decoder LLM -> <USER_EMB> hidden state -> MLP head -> L2 norm.

Public API (everything else is internal):

    model = QAnchorModel(cfg)                        # cfg: training.config.QAnchorConfig; backbone loaded offline
    # Serving (wrap in torch.inference_mode()):
    cache = model.encode_prefix(users)               # users: UserBatch [B] -> PrefixCache (per-user KV, sliceable)
    emb = model.embed(cache, [ScenarioSpec("Will this user ...?", soft_prompt=None), ...])  # -> [B, S, 128]
    cache[i], PrefixCache.cat([...]), cache.nbytes   # per-user slicing, re-batching, size for a byte-bounded LRU
    ref = model.full_forward(users, scenarios)       # same numbers without a cache (the reference)
    # Training (training.pretrain + training.losses):
    out = model.pretrain_forward(users, queries, answers)  # PretrainOutput: anchor/answer [B, 128], NTP sums
    ans = model.encode_answers(texts)                # semantic tower alone -> [N, 128]
    model.trainable_state_dict()                     # adapters, LoRA, head, added-token rows (what checkpoints hold)

Padding: prefixes never need padding (fixed layout, absent events are masked slots). Suffixes are padded on
`cfg.input.padding_side` (right by default); <USER_EMB> is located per row, positions skip padding, so left and
right padding give the same embedding. Cached scenarios are packed into one row per user, each scenario in its
own attention segment over the shared prefix: the prefix KV is read once per user, never copied per scenario.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from training.backbones import Backbone, load_backbone
from training.config import QAnchorConfig
from training.model.encoders import IdentityViews, UserTokenEncoder, user_summary
from training.model.inputs import UserBatch
from training.model.masks import additive_mask, causal_allowed, positions
from training.model.prefix_cache import PrefixCache
from training.model.suffix import (IGNORE, PackedSuffixes, ScenarioSpec, SuffixBatch, build_suffix,
                                   pack_suffixes, tokenize_texts)
from training.model.tokens import add_special_tokens, build_layout

log = logging.getLogger(__name__)
_CUT_LOCK = threading.Lock()  # serialises passes that cut the decoder short (head.layer): see QAnchorModel._decode


@dataclass
class PretrainOutput:
    anchor: torch.Tensor  # [B, out] L2-normalised anchor-tower embeddings
    answer: torch.Tensor  # [B, out] L2-normalised semantic-tower embeddings
    ntp_sum: torch.Tensor  # scalar: summed NTP cross-entropy over answer tokens (sum, so chunks add up)
    ntp_tokens: int  # number of answer tokens in that sum
    identity: torch.Tensor | None = None  # [B, k] anchor-side view for the user-identity term (None when off)
    summary: torch.Tensor | None = None  # [B, k] the users' input-summary view, same term

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The rows the batch-coupled losses compare across users (training.losses.batch_objective)."""
        out = {"anchor": self.anchor, "answer": self.answer}
        if self.identity is not None:
            out.update(identity=self.identity, summary=self.summary)
        return out


class QAnchorModel(nn.Module):
    def __init__(self, cfg: QAnchorConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        backbone = backbone or load_backbone(cfg.backbone)
        self.cfg = cfg
        self.tokenizer = backbone.tokenizer
        self.backbone_name, self.backbone_sha256 = backbone.name, backbone.sha256
        self.special = add_special_tokens(self.tokenizer, [s.name for s in cfg.input.sources])
        lm = backbone.model
        self._prepare_vocab(lm)
        self.hidden = int(lm.config.hidden_size)
        self.n_layers = int(lm.config.num_hidden_layers)
        if cfg.head.layer is not None and cfg.head.layer > self.n_layers:
            raise ValueError(f"head.layer={cfg.head.layer}: {backbone.name} has layers 1..{self.n_layers}")
        # Every new parameter is drawn from the config's seed, without disturbing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.backbone.seed)
            self.backbone = self._wrap_lora(lm)
            base_rows = lm.get_input_embeddings().weight[: self.special.first_id].detach().float()
            # New tokens start at the mean vocabulary embedding (plus small noise so they are distinguishable).
            noise = base_rows.std() * 0.1 * torch.randn(self.special.count, self.hidden)
            self.added_embeddings = nn.Parameter(base_rows.mean(0, keepdim=True) + noise)  # [n_added, hidden]
            self.user_encoder = UserTokenEncoder(cfg.input, self.hidden)
            self.head = nn.Sequential(nn.Linear(self.hidden, cfg.head.mid), nn.ReLU(),
                                      nn.Linear(cfg.head.mid, cfg.head.out))
            # training-only (the user-identity term); built last so every other init is unchanged by it
            self.identity = IdentityViews(
                self.hidden if cfg.loss.identity_on == "hidden" else cfg.head.out,
                len(cfg.input.sources) * cfg.input.d_enc + cfg.input.d_tab,
                cfg.loss.identity_dim) if cfg.loss.identity_weight > 0 else None
        layout = build_layout(self.tokenizer, cfg.input, self.special)
        self.register_buffer("prefix_ids", layout.ids, persistent=False)  # [P]
        self.register_buffer("prefix_slot", layout.slot, persistent=False)  # [P]
        self.trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        # Submodules that run in fp32 under any precision (training.precision.apply_precision keeps their weights)
        self.keep_fp32 = ("head", "identity")
        log.info("event=model_built backbone=%s hidden=%d prefix_len=%d trainable_params=%d", self.backbone_name,
                 self.hidden, layout.length, sum(p.numel() for p in self.parameters() if p.requires_grad))

    def _wrap_lora(self, lm: nn.Module) -> nn.Module:
        lm.requires_grad_(False)  # the backbone itself never trains; LoRA factors do
        if not self.cfg.lora.enabled:
            return lm
        c = self.cfg.lora
        return get_peft_model(lm, LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                             target_modules=list(c.targets), bias="none"))

    def _prepare_vocab(self, lm: nn.Module) -> None:
        need = self.special.first_id + self.special.count
        if lm.get_input_embeddings().weight.shape[0] < need:
            lm.resize_token_embeddings(need, mean_resizing=False)
        # Rows of our tokens inside the frozen matrices are zeroed (deterministic, not saved); the trainable copy
        # lives in `added_embeddings`. Zero output rows give logit 0 to tokens NTP never targets.
        with torch.no_grad():
            rows = slice(self.special.first_id, need)
            lm.get_input_embeddings().weight[rows] = 0
            out = lm.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr():
                out.weight[rows] = 0

    # ---- building blocks -------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.prefix_ids.device

    @property
    def prefix_length(self) -> int:
        return int(self.prefix_ids.shape[0])

    def _lm(self) -> nn.Module:
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> embeddings [..., hidden]; our added tokens read the trainable table."""
        first, count = self.special.first_id, self.special.count
        added = (ids >= first) & (ids < first + count)
        base = self.backbone.get_input_embeddings()(torch.where(added, torch.zeros_like(ids), ids))
        extra = self.added_embeddings[(ids - first).clamp(0, count - 1)].to(base.dtype)
        return torch.where(added.unsqueeze(-1), extra, base)

    def prefix_embeds(self, users: UserBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> prefix embeddings [B, P, hidden] and key validity [B, P] (False on absent events)."""
        soft, soft_valid = self.user_encoder(users.to(self.device))  # [B, n_soft, hidden], [B, n_soft]
        b = users.batch_size
        emb = self.embed_ids(self.prefix_ids.expand(b, -1)).clone()  # [B, P, hidden]
        is_soft = self.prefix_slot >= 0
        emb[:, is_soft] = soft[:, self.prefix_slot[is_soft]].to(emb.dtype)
        valid = torch.ones(b, self.prefix_length, dtype=torch.bool, device=self.device)
        valid[:, is_soft] = soft_valid[:, self.prefix_slot[is_soft]]
        return emb, valid

    def _suffix(self, queries: list[str], prompts: list[torch.Tensor | None],
                answers: list[str] | None = None) -> SuffixBatch:
        c = self.cfg.input
        return build_suffix(self.tokenizer, queries, prompts, answers, user_emb_id=self.special.user_emb,
                            placeholder_id=self.special.placeholder, max_query=c.max_query_tokens,
                            max_answer=c.max_answer_tokens, padding_side=c.padding_side)

    def _suffix_embeds(self, suf: SuffixBatch) -> torch.Tensor:
        emb = self.embed_ids(suf.ids.to(self.device))  # [N, L, hidden]
        if any(p is not None for p in suf.prompts):
            emb = emb.clone()  # in-place writes below must not touch a tensor autograd still needs
            for i, p in enumerate(suf.prompts):
                if p is not None:
                    if p.ndim != 2 or p.shape[1] != self.hidden:
                        raise ValueError(f"soft prompt must be [n_tokens, {self.hidden}], got {tuple(p.shape)}")
                    s = int(suf.prompt_start[i])
                    emb[i, s: s + p.shape[0]] = p.to(device=emb.device, dtype=emb.dtype)
        return emb

    @property
    def served_layers(self) -> int:
        """Decoder layers inference runs (head.layer, else all): the depth of the prefix cache and suffix pass."""
        return self.cfg.head.layer or self.n_layers

    def _decode(self, emb: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor,
                past: PrefixCache | None = None, use_cache: bool = False, serve: bool = False):
        """The decoder over `emb`. serve=True (inference paths) stops after `served_layers` (the final norm still
        applies, as in a model cut there); training towers always run every layer."""
        lm = self._lm().model
        depth = self.served_layers if serve else self.n_layers
        if past is not None and len(past.keys) != depth:
            raise ValueError(f"prefix cache of {len(past.keys)} layers for a {depth}-layer pass: it was encoded by "
                             "another read-out of this model; encode the prefix again")
        kwargs = dict(inputs_embeds=emb, attention_mask=additive_mask(allowed, emb.dtype), position_ids=pos,
                      past_key_values=past.as_hf_cache() if past else None, use_cache=use_cache)
        if depth == self.n_layers:
            out = lm(**kwargs)
        else:  # the decoder runs layers[:config.num_hidden_layers] (Llama, Qwen2): cut it for this pass only. The
            # config is shared state, so cut passes never overlap (a model serves or trains, never both at once)
            with _CUT_LOCK:
                lm.config.num_hidden_layers = depth
                try:
                    out = lm(**kwargs)
                finally:
                    lm.config.num_hidden_layers = self.n_layers
        return out.last_hidden_state, out.past_key_values

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden state [..., hidden] -> L2-normalised embedding [..., out] (shared by both towers)."""
        # fp32 even under bf16 autocast: early in training every embedding sits near one direction and the
        # cosines that tell users apart differ in the third decimal, below bf16's resolution
        with torch.autocast(h.device.type, enabled=False):
            return F.normalize(self.head(h.float()), dim=-1)

    @property
    def embedding_dim(self) -> int:
        """Width of what inference serves (`embed`, `embed_per_user`, `full_forward`): cfg.head.embedding."""
        return self.hidden if self.cfg.head.embedding == "hidden" else self.cfg.head.out

    def served(self, h: torch.Tensor) -> torch.Tensor:
        """<USER_EMB> hidden state [..., hidden] -> the served L2-normalised embedding [..., embedding_dim]."""
        if self.cfg.head.embedding == "projected":
            return self.project(h)
        with torch.autocast(h.device.type, enabled=False):
            return F.normalize(h.float(), dim=-1)

    # ---- training towers -------------------------------------------------------------------------------------
    def _anchor(self, pre: torch.Tensor, pre_valid: torch.Tensor, suf: SuffixBatch, serve: bool = False):
        suf_emb = self._suffix_embeds(suf)  # [N, L, hidden]
        emb = torch.cat([pre, suf_emb], dim=1)  # [N, P + L, hidden]
        valid = torch.cat([pre_valid, suf.valid.to(self.device)], dim=1)  # [N, P + L]
        hidden, _ = self._decode(emb, causal_allowed(valid), positions(valid), serve=serve)
        suffix_hidden = hidden[:, self.prefix_length:]  # [N, L, hidden]
        rows = torch.arange(hidden.shape[0], device=self.device)
        return suffix_hidden, suffix_hidden[rows, suf.emb_pos.to(self.device)]  # [N, L, h], [N, h]

    def pretrain_forward(self, users: UserBatch, queries: list[str], answers: list[str]) -> PretrainOutput:
        """Anchor tower with NTP on the answer (after <USER_EMB>) + semantic tower on the same answers."""
        if not users.batch_size == len(queries) == len(answers):
            raise ValueError(f"{users.batch_size} users, {len(queries)} queries, {len(answers)} answers: one each")
        pre, pre_valid = self.prefix_embeds(users)
        suf = self._suffix(queries, [None] * len(queries), answers)
        suffix_hidden, h = self._anchor(pre, pre_valid, suf)
        target = suf.labels.to(self.device)[:, 1:]  # position t predicts token t + 1
        scored = target != IGNORE  # [N, L - 1]: answer tokens only; the vocab projection skips every other row
        logits = self._lm().lm_head(suffix_hidden[:, :-1][scored]).float()  # [n_tokens, vocab]
        ntp_sum = F.cross_entropy(logits, target[scored], reduction="sum")
        anchor = self.project(h)
        identity = summary = None
        if self.identity is not None:
            side = h if self.cfg.loss.identity_on == "hidden" else anchor
            identity, summary = self.identity(side, user_summary(users.to(self.device)))
        return PretrainOutput(anchor=anchor, answer=self.encode_answers(answers), ntp_sum=ntp_sum,
                              ntp_tokens=int(scored.sum()), identity=identity, summary=summary)

    def encode_answers(self, texts: list[str]) -> torch.Tensor:
        """Semantic tower: the same LLM reads the answer text; last non-pad token -> head. -> [N, out]."""
        ids, valid = tokenize_texts(self.tokenizer, texts, self.cfg.input.max_answer_tokens,
                                    self.cfg.input.padding_side)
        ids, valid = ids.to(self.device), valid.to(self.device)
        hidden, _ = self._decode(self.embed_ids(ids), causal_allowed(valid), positions(valid))
        idx = torch.arange(ids.shape[1], device=self.device)
        last = (valid.long() * idx).argmax(dim=1)  # last valid index, whichever side the padding is on
        return self.project(hidden[torch.arange(ids.shape[0], device=self.device), last])

    # ---- inference -------------------------------------------------------------------------------------------
    def full_forward(self, users: UserBatch, scenarios: list[ScenarioSpec]) -> torch.Tensor:
        """Reference path: one full forward per (user, scenario) row. -> [B, S, embedding_dim]."""
        b, s = users.batch_size, len(scenarios)
        if s == 0:
            raise ValueError("no scenarios given: pass at least one ScenarioSpec")
        pre, pre_valid = self.prefix_embeds(users)
        pre = pre.repeat_interleave(s, dim=0)  # [B * S, P, hidden], row = user * S + scenario
        pre_valid = pre_valid.repeat_interleave(s, dim=0)
        suf = self._suffix([sc.query for sc in scenarios] * b, [sc.soft_prompt for sc in scenarios] * b)
        _, h = self._anchor(pre, pre_valid, suf, serve=True)  # [B * S, hidden]
        return self.served(h).view(b, s, -1)  # [B, S, embedding_dim]

    def encode_prefix(self, users: UserBatch) -> PrefixCache:
        """Run the user prefix once; the returned cache serves any number of scenarios for these users."""
        pre, valid = self.prefix_embeds(users)
        _, past = self._decode(pre, causal_allowed(valid), positions(valid), use_cache=True, serve=True)
        return PrefixCache.from_hf_cache(past, valid)

    def embed(self, cache: PrefixCache, scenarios: list[ScenarioSpec]) -> torch.Tensor:
        """Embeddings for every user in `cache` x every scenario -> [B, S, embedding_dim] (`embed_per_user` with one
        list)."""
        if not scenarios:
            raise ValueError("no scenarios given: pass at least one ScenarioSpec")
        return torch.stack(self.embed_per_user(cache, [scenarios] * cache.batch_size))

    def embed_per_user(self, cache: PrefixCache, per_user: list[list[ScenarioSpec]]) -> list[torch.Tensor]:
        """Embeddings for user i of `cache` x its own scenarios per_user[i] -> list of [S_i, embedding_dim].

        Each user's suffixes are packed into one row, padding dropped: scenario j contributes only its real tokens
        (a query's padding to the longest query would be computed through every layer and thrown away; on ten
        typical scenarios it was a third of the row). Segment ids keep scenario j from seeing scenario i != j, every
        scenario reads the shared prefix keys once, and positions continue the prefix's inside each scenario. Rows
        of users with fewer tokens are padded at the end with masked keys. Several users' requests share one
        forward this way (training.export.runtime). Differentiable w.r.t. soft prompts (training.tune).
        """
        hidden, lay = self.decode_suffixes(cache, per_user)
        out = self.served(hidden[lay.gather_row.to(self.device), lay.gather_col.to(self.device)])
        return list(out.split([len(scs) for scs in per_user]))  # [S_i, embedding_dim] each

    def decode_suffixes(self, cache: PrefixCache,
                        per_user: list[list[ScenarioSpec]]) -> tuple[torch.Tensor, PackedSuffixes]:
        """`embed_per_user`'s packed suffix pass without its read-out: the decoder's states [B, T, hidden] and the
        layout whose gather_row / gather_col locate each scenario's `<USER_EMB>` token (flat, user after user).
        Diagnostics that hook the decoder's layers (benchmarks/quality/layer_scan.py) read the same positions."""
        hidden, lay, _ = self._decode_packed(cache, per_user)
        return hidden, lay

    def query_kv(self, cache: PrefixCache, query: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The keys and values the decoder computes for `query`'s own tokens (then `<USER_EMB>`) read over each
        cached user's prefix: per served layer [B, kv_heads, L, head_dim], L = the query's tokens + 1. What a deep
        prompt starts from (training.tune, depth="deep")."""
        _, lay, past = self._decode_packed(cache, [[ScenarioSpec(query)]] * cache.batch_size)
        n = int(lay.valid.sum(dim=1).min())  # one scenario per row: every row holds the same tokens
        p = cache.length
        return ([layer.keys[:, :, p:p + n] for layer in past.layers],
                [layer.values[:, :, p:p + n] for layer in past.layers])

    def _decode_packed(self, cache: PrefixCache, per_user: list[list[ScenarioSpec]]):
        b, p = cache.batch_size, cache.length
        if len(per_user) != b:
            raise ValueError(f"{len(per_user)} scenario lists for {b} cached users: one list per user")
        if any(not scs for scs in per_user):
            raise ValueError("no scenarios given for a user: pass at least one ScenarioSpec each")
        dev = self.device
        flat = [sc for scs in per_user for sc in scs]
        suf = self._suffix([sc.query for sc in flat], [sc.soft_prompt for sc in flat])
        emb = self._suffix_embeds(suf)  # [N, L, hidden]
        suf_valid = suf.valid.to(dev)  # [N, L]
        tokens = emb[suf_valid]  # [sum of lengths, hidden], scenario after scenario
        lay = pack_suffixes(suf, [len(scs) for scs in per_user])
        seg, within, valid = lay.seg.to(dev), lay.within.to(dev), lay.valid.to(dev)
        packed = emb.new_zeros(b, lay.seg.shape[1], emb.shape[-1])  # [B, T, hidden]
        packed[valid] = tokens  # row-major: user 0's scenarios, then user 1's, ...
        key_valid = torch.cat([cache.valid, valid], dim=1)  # [B, P + T]
        k_seg = torch.cat([torch.zeros(b, p, dtype=torch.long, device=dev), seg], dim=1)
        allowed = causal_allowed(key_valid, q_start=p, q_seg=seg, k_seg=k_seg)  # [B, T, P + T]
        pos = cache.next_pos.unsqueeze(1) + within  # [B, T]
        hidden, past = self._decode(packed, allowed, pos, past=cache, use_cache=True, serve=True)  # [B, T, hidden]
        return hidden, lay, past

    # ---- parameters for checkpoints --------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {n: params[n].detach() for n in self.trainable_names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.trainable_names) - set(state))
        unexpected = sorted(set(state) - set(self.trainable_names))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match this config: missing={missing[:5]} "
                             f"unexpected={unexpected[:5]}; load it with the config stored next to it")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                if params[n].shape != t.shape:
                    raise ValueError(f"{n}: checkpoint shape {tuple(t.shape)} != model {tuple(params[n].shape)}")
                params[n].copy_(t)
