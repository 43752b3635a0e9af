"""A from-scratch BERT encoder and MLM head, numerically equal to Hugging Face's ``BertModel``.

Read top to bottom: embeddings, one post-LN transformer layer, the encoder, the MLM head. The
parameter names are our own; ``checkpoint.py`` maps them to and from Hugging Face key names.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` so CUDA picks a
fused kernel. A key-padding mask is passed only when the caller gives ``attention_mask``; with
no mask the flash backend is eligible. Limits: absolute positions only, no decoder / cross
attention, no KV cache (this is an encoder for fine-tuning and MLM, not generation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlt_engine.model.config import BertConfig
from xlt_engine.model.families import get_family


class _NoOneDNN:
    """oneDNN off for the ops inside (a process-wide switch, restored on exit). Not
    ``torch.backends.mkldnn.flags``: it also sets the TF32 flag, and warns about it."""

    def __enter__(self):
        self.was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc):
        torch.backends.mkldnn.enabled = self.was


class _CPUGelu(torch.autograd.Function):
    """Exact GELU on CPU through ATen's own kernels, forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        with _NoOneDNN():
            return torch.ops.aten.gelu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        with _NoOneDNN():
            return torch.ops.aten.gelu_backward(grad, x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, equal to ``F.gelu``. On CPU, ATen sends ``F.gelu`` and its backward to
    oneDNN, which builds and caches a primitive per input shape (up to 1,024 of them, about
    0.9 MB each): batches of changing shapes grew a process by 880 MB (one inference pass over 1M
    sentences of varied lengths, 270 -> 1,152 MB anonymous memory). ATen's own kernel is as fast
    at these shapes and keeps nothing."""
    if x.device.type == "cpu" and torch.backends.mkldnn.enabled:
        return _CPUGelu.apply(x)
    return F.gelu(x)


class GELU(nn.Module):
    """``gelu`` as a module (the exact form, as ``nn.GELU()``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x)


def activation(name: str):
    """The activation named by ``BertConfig.hidden_act`` (gelu is the exact erf form)."""
    if name == "gelu":
        return GELU()
    if name == "gelu_new":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported activation {name!r}")


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU: one uniform draw per element and a comparison
    (``rand >= p``) in place of ATen's ``bernoulli_``, the same distribution from the same
    generator (so seeded and resumed runs stay exact), another random stream. Measured on this
    machine's CPU, one thread, a [16, 40, 384] activation: about 700-830 us against 1,100-1,200
    forward (issue 55: ``bernoulli_`` was 12% of an e5-small training step). Elsewhere (CUDA,
    eval mode, p = 0) ``nn.Dropout`` as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or self.p == 0.0 or self.p == 1.0:
            return super().forward(x)
        keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, H)
        self.token_type = nn.Embedding(config.type_vocab_size, H)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset
        self.pad_id = config.pad_token_id

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if self.position_offset:
            # RoBERTa: real tokens count from pad_token_id + 1, padding sits at pad_token_id
            real = (input_ids != self.pad_id).long()
            positions = torch.cumsum(real, 1) * real + self.pad_id  # (B, T)
        else:
            T = input_ids.shape[1]
            positions = torch.arange(T, device=input_ids.device)  # (T,), broadcast over the batch
        x = self.word(input_ids) + self.position(positions)
        if token_type_ids is None:
            x = x + self.token_type.weight[0]  # every token is segment 0
        else:
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.head_dim = config.head_dim
        self.q = nn.Linear(H, H)
        self.k = nn.Linear(H, H)
        self.v = nn.Linear(H, H)
        self.out = nn.Linear(H, H)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        # (B, T, H) -> (B, nh, T, hs)
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.out(y)


class BertLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.attn = BertSelfAttention(config)
        self.attn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(H, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.ffn_out = nn.Linear(config.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, mask)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))
        return x


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) weights, zero biases, unit LayerNorm, zero pad row.
    Nothing on the meta device (a model built only for its shapes: the init there costs
    about 0.3 s of Python per model and sets nothing)."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BertEncoder(nn.Module):
    """Embeddings + ``num_hidden_layers`` post-LN layers; returns the last hidden state.

    ``pooler``: also hold BERT's pooler (``tanh(dense(h[:, 0]))``, ``pooler.dense`` in Hugging
    Face names), as checkpoints that ship one (LaBSE, ``BertModel`` saves) need for a pooled
    sentence representation; ``pooled(hidden)`` applies it.
    """

    def __init__(self, config: BertConfig, pooler: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        init_bert_weights(self, config.initializer_range)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, H] last hidden state -> [B, H] pooler output."""
        if self.pooler is None:
            raise ValueError(
                "this encoder has no pooler (its checkpoint holds no pooler.dense weights): "
                "use the cls or mean representation"
            )
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: int [B, T]
        on the model's device. Returns the last hidden state [B, T, H] in the compute dtype.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.max_tokens:
            raise ValueError(
                f"sequence length {T} exceeds the {self.config.max_tokens} positions of the "
                f"model (max_position_embeddings {self.config.max_position_embeddings}): split "
                "long inputs into windows"
            )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}, input_ids has {tuple(input_ids.shape)}"
                )
        mask = None
        if attention_mask is not None:
            # key-padding mask, True = may attend; (B, 1, 1, T) broadcasts over heads and queries
            mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BertMLMHead(nn.Module):
    """transform (dense, activation, LayerNorm) then the decoder tied to the word embeddings.

    The decoder weight is not a parameter here: it is passed in (the encoder's word embedding
    matrix), so the tie cannot break. ``bias`` is ``cls.predictions.bias`` in Hugging Face names.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.dense = nn.Linear(H, H)
        # a family's own head activation (RoBERTa's: the exact gelu, whatever hidden_act says)
        self.act = activation(get_family(config.model_type).head_act or config.hidden_act)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, H]: the input of the decoder projection (and of ``fused_mlm_loss``)."""
        return self.norm(self.act(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """[N, H] hidden states of the selected positions -> [N, V] logits."""
        return F.linear(self.transform(hidden), decoder_weight, self.bias)


def select_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``hidden`` [B, T, H] at ``positions``: a bool mask [B, T] or flat indices [N]
    into B*T. Flat indices avoid the host sync that boolean indexing implies."""
    B, T, H = hidden.shape
    if positions.dtype == torch.bool:
        if positions.shape != (B, T):
            raise ValueError(
                f"positions mask has shape {tuple(positions.shape)}, expected {(B, T)}"
            )
        return hidden[positions]  # (N, H)
    if positions.dim() != 1 or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError("positions must be a bool mask [B, T] or integer flat indices [N]")
    return hidden.reshape(B * T, H).index_select(0, positions)  # (N, H)


class BertForMLM(nn.Module):
    """``BertEncoder`` + MLM head. Logits are computed only for the positions asked for."""

    def __init__(self, config: BertConfig, pooler: bool = False):
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config, pooler)
        self.head = BertMLMHead(config)
        init_bert_weights(self.head, config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def idle_parameters(self) -> list[str]:
        """Parameters the MLM loss never reads (the pooler): ``loop.prepare`` freezes them, as
        DDP needs every trainable parameter to get a gradient."""
        return [n for n, _ in self.named_parameters() if n.startswith("encoder.pooler.")]

    @property
    def decoder_weight(self) -> torch.Tensor:
        """The tied decoder weight [V, H] (the word embedding matrix)."""
        return self.encoder.embeddings.word.weight

    def masked_hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Transformed hidden states [N, H] of the selected positions: with
        ``decoder_weight`` and ``head.bias`` the inputs of ``fused_mlm_loss``."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.head.transform(select_positions(hidden, positions))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits [N, V] for ``positions`` (bool [B, T] or flat indices [N]) only."""
        h = self.masked_hidden(input_ids, positions, attention_mask, token_type_ids)
        return F.linear(h, self.decoder_weight, self.head.bias)
