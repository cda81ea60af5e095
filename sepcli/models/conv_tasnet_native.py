"""The packing of a causal Conv-TasNet's streaming step for the C kernel
(``backend="native"``): :class:`NativeStep` lays the folded weights and the
running state out as ``SepNet``/``SepBlock`` of sepcli/csrc/stream_blocks.c
(mirrored in :mod:`sepcli.native`, which builds and loads the kernel) and
calls ``sep_network`` once per step. docs/streaming-kernel.md has what it gains.

Shape legend: G lanes, K frames per lane, S sources, and the paper's N, L, B, H, Sc, P.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sepcli.models.conv_tasnet_stream import ConvTasNetStream


class NativeStep:
    """A :class:`~sepcli.models.conv_tasnet_stream.ConvTasNetStream`'s network and
    state in the layout of ``SepNet`` and ``SepBlock`` (sepcli/csrc/stream_blocks.c):
    one native call per step runs what :meth:`ConvTasNetStream.step` does in torch.
    The biases and the depthwise taps are the stream's folded ones; the
    matrices are the model's own (:class:`~sepcli.models.conv_tasnet_folded.FoldedNet`'s
    ``w_b`` and ``w_out``), with the gains of norm0 and of every norm2 applied
    to the normalised rows instead, so that a model whose weights are float16
    values (every shipped one) keeps them exact in float16 panels
    (:attr:`half`, for real-time chunks of a few frames): half the bytes per
    step, same products. The caches and norm sums live here; the masked-frame
    tail is the stream's own, which the kernel updates in place (the stream's
    :meth:`~ConvTasNetStream.drain` decodes it in torch).
    """

    def __init__(self, st: ConvTasNetStream, lanes: int, room: int) -> None:
        from sepcli import native

        self.lib = native.load()
        width = self.lib.sep_panel_width()
        self.lanes = lanes
        f32 = torch.float32

        def vec(x: float | torch.Tensor) -> torch.Tensor:
            return torch.tensor([x], dtype=f32) if isinstance(x, float) else x.to(f32).contiguous()

        def matrix(w: torch.Tensor) -> torch.Tensor:
            return w.t().to(f32)  # [out, in] float64 -> [in, out]

        folded = st.folded
        mats = dict(
            w_enc=st.w_enc_t,  # [L, N]
            w_acc=F.pad(matrix(folded.w_b), (0, st.dims["Sc"])),  # [N, B+Sc]: no input to the skip sum
            w_mask=st.w_mask_t,  # [Sc, S*N]
        )
        block_mats = [dict(w_in=matrix(fb.w_in), w_out=matrix(fb.w_out)) for fb in folded.blocks]  # [B, H], [H, B+Sc]
        everything = [*mats.values(), *st.w_dec_hops, *(w for bm in block_mats for w in bm.values())]
        # Float16 panels pay when a step reads each panel once (a chunk's rows fit
        # one register tile: the products wait for memory); with more rows the
        # kernel converts each panel once per tile, and float32 is faster.
        rows = lanes * -(-(st.chunk_size or st.hop) // st.hop)
        self.half = (bool(self.lib.sep_has_half()) and native.HALF_PANELS and rows <= self.lib.sep_tile_rows()
                     and native.exactly_half(*everything))
        panel_dtype = torch.float16 if self.half else f32

        def pack(w: torch.Tensor) -> torch.Tensor:
            return native.pack_panels(w, width, panel_dtype)

        self.structs = (native.SepBlock * len(st.blocks))()
        self._keep: list[dict[str, torch.Tensor]] = []  # what each struct points into
        for sb, b, fb, bm in zip(self.structs, st.blocks, folded.blocks, block_mats, strict=True):
            B, H = bm["w_in"].shape
            arrays = dict(
                w_in=pack(bm["w_in"]), b_in=b.b_in.contiguous(),
                slope1=vec(b.slope1), slope2=vec(b.slope2),
                taps=torch.stack(b.taps).contiguous(),  # [P, H]: norm1's gain folded in
                offsets=torch.tensor(b.cache.offsets, dtype=torch.int32),
                b_d=b.b_d.contiguous(), tap_bias=b.tap_bias.contiguous(),
                w_out=pack(bm["w_out"]), gain2=vec(fb.g2),
                cache=torch.zeros(lanes, b.pad + max(room, b.pad, 1), H),  # [G, cap, H]
                sums=torch.zeros(2, lanes, 2, dtype=torch.float64),  # [norm, G, (sum, sum of squares)]
            )
            sb.B, sb.H, sb.P, sb.n_out = B, H, len(b.taps), bm["w_out"].shape[1]
            sb.n_slope1, sb.n_slope2 = arrays["slope1"].numel(), arrays["slope2"].numel()
            sb.pad, sb.cap = b.pad, arrays["cache"].shape[1]
            sb.eps1, sb.eps2 = b.norm1.eps, b.norm2.eps
            for name, t in arrays.items():
                setattr(sb, name, t.data_ptr())
            self._keep.append(arrays)
        d = st.dims
        dec = torch.stack([pack(w) for w in st.w_dec_hops])  # [q, panels, N, width]
        self.arrays = dict(
            **{name: pack(w) for name, w in mats.items()}, w_dec=dec, gain0=vec(folded.g0),
            b_acc=st.b_acc.contiguous(), slope_out=vec(st.slope_out), b_mask=st.b_mask.contiguous(),
            sums0=torch.zeros(lanes, 2, dtype=torch.float64),
        )
        net = self.net = native.SepNet()
        net.N, net.L, net.hop, net.q, net.S = d["N"], st.L, st.hop, st.q, d["S"]
        net.B, net.Sc, net.n_out, net.H = d["B"], d["Sc"], d["B"] + d["Sc"], d["H"]
        net.n_blocks = len(st.blocks)
        net.n_slope_out = self.arrays["slope_out"].numel()
        net.half = int(self.half)
        net.eps0 = st.norm0.eps
        net.decay = st.norm0.decay
        for name, t in self.arrays.items():
            setattr(net, name, t.data_ptr())
        net.w_dec_stride = dec[0].numel()
        net.blocks = self.structs
        self._room = min(sb.cap - sb.pad for sb in self.structs) if len(self.structs) else room
        self._scratch: dict[int, torch.Tensor] = {}  # the stream's reset() calls reset(tail) before any step

    def reset(self, tail: torch.Tensor) -> None:
        for sb, arrays in zip(self.structs, self._keep, strict=True):
            arrays["cache"].zero_()  # the causal zero padding
            arrays["sums"].zero_()
            sb.pos = sb.pad
        self.arrays["sums0"].zero_()
        self.tail = tail
        self.net.tail = tail.data_ptr()

    def _make_room(self, frames: int) -> None:
        """Grow every cache that cannot take ``frames`` more frames, keeping its last pad frames."""
        if frames <= self._room:
            return
        self._room = frames
        for sb, arrays in zip(self.structs, self._keep, strict=True):
            if sb.cap - sb.pad >= frames:
                continue
            old = arrays["cache"]
            cache = old.new_zeros(self.lanes, sb.pad + frames, sb.H)
            cache[:, : sb.pad] = old[:, sb.pos - sb.pad : sb.pos]
            arrays["cache"] = cache
            sb.cache, sb.cap, sb.pos = cache.data_ptr(), cache.shape[1], sb.pad

    def __call__(self, xs: list[torch.Tensor], frames: int, start: int, out: torch.Tensor) -> None:
        """Shape: xs [(K-1)*hop + L] per lane (contiguous float32) -> out [G, S, K*hop]."""
        self._make_room(frames)
        scratch = self._scratch.get(frames)
        if scratch is None:
            if len(self._scratch) >= 4:
                self._scratch.clear()
            n = self.lib.sep_scratch_floats(ctypes.byref(self.net), frames, self.lanes)
            scratch = self._scratch[frames] = torch.empty(n)
        xs = [x if x.is_contiguous() else x.contiguous() for x in xs]  # the kernel reads plain arrays
        lane_in = (ctypes.c_void_p * len(xs))(*[x.data_ptr() for x in xs])
        self.lib.sep_network(ctypes.byref(self.net), lane_in, frames, self.lanes, start, out.data_ptr(),
                             scratch.data_ptr())


__all__ = ["NativeStep"]
