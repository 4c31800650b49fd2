"""Encoders and fusions: shapes and masks, no look-ahead through any of them, modality dropout, and a
model trained with news that still predicts when the news is absent."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import CONF
from forecast.model.encoders.calendar import CalendarEncoder
from forecast.model.encoders.exogenous import ExogenousEncoder
from forecast.model.encoders.news import NewsEncoder, SentenceNewsEncoder
from forecast.model.fusion import FiLMFusion

B, L, K, D = 4, 10, 6, 16
DIMS = dict(n_features=5, n_tickers=4, window=L, n_calendar=30, n_exog=4, n_exog_mask=4, n_news_tokens=K,
            n_news_weights=K, n_news_emb=384)
ALL = ["price", "ticker", "calendar", "exogenous", "news", "news_minilm"]
FUSIONS = ["sum", "concat", "gated", "film"]


def fake_batch(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 1 << 20, (B, L, K), generator=g, dtype=torch.int32)
    tokens[torch.rand(B, L, generator=g) < 0.5] = 0  # half of the sessions without news
    tokens[..., K // 2:] = 0  # padding
    weights = (tokens > 0).float() / (K // 2)
    return dict(x=torch.randn(B, L, 5, generator=g), ticker=torch.tensor([0, 1, 2, 3]),
                calendar=torch.rand(B, L, 30, generator=g), exog=torch.randn(B, L, 4, generator=g),
                exog_mask=torch.rand(B, L, 4, generator=g) < 0.7, news_tokens=tokens, news_weights=weights,
                news_emb=torch.randn(B, L, 384, generator=g), news_emb_mask=torch.rand(B, L, generator=g) < 0.5)


def _model(fusion="sum", backbone="transformer", modalities=ALL, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"modalities=[{','.join(modalities)}]", f"model/fusion={fusion}",
                                          f"model/backbone={backbone}", f"model.d_model={D}", *extra])
    torch.manual_seed(0)
    return instantiate(cfg.model, dims=DIMS).eval()


def test_encoder_shapes_and_masks():
    batch = fake_batch()
    encoders = [CalendarEncoder(DIMS, D), CalendarEncoder(DIMS, D, hidden=0), ExogenousEncoder(DIMS, D),
                ExogenousEncoder(DIMS, D, hidden=0),
                NewsEncoder(DIMS, D, n_buckets=64), SentenceNewsEncoder(DIMS, D)]
    for enc in encoders:
        e, m = enc(batch)
        assert e.shape == (B, L, D) and m.shape == (B, L) and m.dtype == torch.bool, type(enc).__name__
    _, m = ExogenousEncoder(DIMS, D)(batch)
    assert torch.equal(m, batch["exog_mask"].any(-1))
    e, m = NewsEncoder(DIMS, D, n_buckets=64)(batch)
    assert torch.equal(m, (batch["news_tokens"] > 0).any(-1)) and (e[~m] == 0).all() and (e[m] != 0).any()


def test_absent_inputs_give_masked_outputs():
    """A model trained with exogenous series or news can be served a batch without them."""
    batch = {k: v for k, v in fake_batch().items() if k in ("x", "ticker", "calendar")}
    for enc in [ExogenousEncoder(DIMS, D), NewsEncoder(DIMS, D), SentenceNewsEncoder(DIMS, D)]:
        e, m = enc(batch)
        assert e.shape == (B, L, D) and not m.any()


def test_news_encoder_pools_headlines_by_weight():
    """Two headlines in one session = the mean of the two single-headline sessions' bag vectors."""
    enc = NewsEncoder(DIMS, D, n_buckets=100)
    a, b = torch.tensor([5, 6, 7, 0]), torch.tensor([9, 10, 0, 0])
    bag = lambda ids, w: enc.bag(ids[None], per_sample_weights=w[None])  # noqa: E731
    va = bag(a, torch.tensor([1 / 3] * 3 + [0]))
    vb = bag(b, torch.tensor([0.5, 0.5, 0, 0]))
    both = bag(torch.tensor([5, 6, 7, 9, 10]), torch.tensor([1 / 6] * 3 + [0.25] * 2))
    assert torch.allclose(both, (va + vb) / 2, atol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_ignores_masked_steps_and_drops_only_in_training(fusion):
    model = _model(fusion, "transformer", ALL, "model.fusion.modality_dropout=0.5")
    batch = fake_batch()
    parts = {n: enc(batch) for n, enc in model.encoders.items()}
    out = model.fusion.fuse(parts)
    assert out.shape == (B, L, D) and torch.isfinite(out).all()
    e, m = parts["news"]
    noisy = dict(parts, news=(e + 100 * (~m)[..., None], m))  # change only the masked steps
    assert torch.allclose(model.fusion.fuse(noisy), out, atol=1e-6)
    assert torch.equal(model.fusion.fuse(parts), out)  # eval: no dropout
    model.fusion.train()
    torch.manual_seed(1)
    dropped = model.fusion.drop(parts)
    assert torch.equal(dropped["price"][1], parts["price"][1])  # `keep`: price is never dropped
    assert any(not torch.equal(dropped[n][1], parts[n][1]) for n in ("calendar", "exogenous", "ticker"))


@pytest.mark.parametrize("fusion,backbone", [(f, "transformer") for f in FUSIONS] + [("gated", "mamba")])
def test_no_look_ahead_through_encoders_fusion_and_backbone(fusion, backbone):
    """Changing every input after step t changes no output at steps <= t."""
    model, t = _model(fusion, backbone), 5
    a, b = fake_batch(0), fake_batch(1)
    later = {k: torch.cat([a[k][:, :t + 1], b[k][:, t + 1:]], 1) if a[k].dim() > 1 else a[k] for k in a}
    run = lambda batch: model.backbone(model.fusion.fuse({n: enc(batch) for n, enc in model.encoders.items()}))  # noqa
    ha, hb = run(a), run(later)
    assert torch.allclose(ha[:, :t + 1], hb[:, :t + 1], atol=1e-5)
    assert not torch.allclose(ha[:, t + 1:], hb[:, t + 1:], atol=1e-3)


def test_every_fusion_and_encoder_composes_with_all_modalities():
    for fusion in FUSIONS:
        model = _model(fusion, "lstm")
        assert list(model.encoders) == ALL
        y = model(**fake_batch())
        assert y.shape == (B,) and torch.isfinite(y).all()


def test_factor_head_adds_per_ticker_loadings_on_the_date_level_inputs():
    """Zero loadings at the start (= the point head); then the same calendar and exogenous inputs move
    each ticker's forecast differently; masked steps and later steps never matter."""
    point = _model("sum", "lstm")
    model = _model("sum", "lstm", ALL, "model/head=factor")
    batch = fake_batch()
    assert model.load_state_dict(point.state_dict(), strict=False).unexpected_keys == []
    assert torch.allclose(model(**batch), point(**batch), atol=1e-6)
    torch.nn.init.normal_(model.head.loadings.weight)
    parts = {n: enc(batch) for n, enc in model.encoders.items()}
    h = model.backbone(model.fusion.fuse(parts))
    y = model.head(h, parts)
    e, m = parts["exogenous"]
    noisy = dict(parts, exogenous=(e + 100 * (~m)[..., None], m))
    assert torch.allclose(model.head(h, noisy), y, atol=1e-5)  # masked steps contribute nothing
    later = {n: (e.clone(), m) for n, (e, m) in parts.items()}
    for e, _ in later.values():
        e[:, :-1] += torch.randn_like(e[:, :-1])  # the head reads only the anchor step
    assert torch.allclose(model.head(h, later), y, atol=1e-5)
    other = dict(parts, ticker=(parts["ticker"][0].roll(1, 0), parts["ticker"][1]))
    assert not torch.allclose(model.head(h, other), y, atol=1e-3)
    assert torch.allclose(model.head(h, {k: v for k, v in parts.items() if k != "ticker"}), point.head(h), atol=1e-6)
    no_exog = model(**{k: v for k, v in batch.items() if not k.startswith("exog")})  # series absent
    assert torch.isfinite(no_exog).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_an_exclusive_factor_head_keeps_its_modalities_from_the_backbone(fusion):
    model = _model(fusion, "lstm", ALL, "model/head=factor", "model.head.exclusive=true")
    assert model.fused == ["price", "news", "news_minilm"]
    a, b = fake_batch(0), fake_batch(1)
    mixed = dict(a, ticker=b["ticker"].flip(0), calendar=b["calendar"], exog=b["exog"], exog_mask=b["exog_mask"])
    hidden = lambda batch: model.backbone(model.fusion.fuse(  # noqa: E731
        {m: model.encoders[m](batch) for m in model.fused}))
    assert torch.equal(hidden(a), hidden(mixed))  # the backbone never sees them
    torch.nn.init.normal_(model.head.loadings.weight)
    assert not torch.allclose(model(**a), model(**mixed), atol=1e-3)  # the head does
    no_ticker = _model(fusion, "lstm", ["price", "calendar", "exogenous"], "model/head=factor",
                       "model.head.exclusive=true")
    assert no_ticker.fused == ["price", "calendar", "exogenous"]  # no loadings: nothing is taken


@pytest.fixture
def one_thread():
    """Tiny models train ~20x faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_film(fusion: FiLMFusion) -> FiLMFusion:
    torch.nn.init.normal_(fusion.film.weight, std=0.3)  # away from the identity initialisation
    torch.nn.init.normal_(fusion.film.bias, std=0.3)
    return fusion


def test_film_modulates_by_the_ticker_and_ignores_masked_steps():
    model = _model("film", "lstm")
    fusion = _random_film(model.fusion)
    batch = fake_batch()
    parts = {n: enc(batch) for n, enc in model.encoders.items()}
    out = fusion.fuse(parts)
    assert out.shape == (B, L, D) and torch.isfinite(out).all()
    e, m = parts["exogenous"]
    noisy = dict(parts, exogenous=(e + 100 * (~m)[..., None], m))  # shift (beta) must not leak either
    assert torch.allclose(fusion.fuse(noisy), out, atol=1e-5)
    # the same exogenous input is read differently for another ticker: the product is explicit
    te, tm = parts["ticker"]
    other = dict(parts, ticker=(te.roll(1, 0), tm))
    only_ticker = dict(other, exogenous=(parts["exogenous"][0] * 0, parts["exogenous"][1]))
    base = dict(parts, exogenous=only_ticker["exogenous"])
    assert not torch.allclose(fusion.fuse(other) - fusion.fuse(only_ticker), fusion.fuse(parts) - fusion.fuse(base),
                              atol=1e-3)


def test_film_without_the_condition_or_a_modality_still_predicts():
    model = _model("film", "lstm")
    _random_film(model.fusion)
    batch = fake_batch()
    full = model(**batch)
    no_exog = model(**{k: v for k, v in batch.items() if not k.startswith("exog")})  # series absent
    assert torch.isfinite(no_exog).all() and not torch.allclose(full, no_exog)
    parts = {n: enc(batch) for n, enc in model.encoders.items()}
    e, m = parts["ticker"]
    masked = model.fusion.fuse(dict(parts, ticker=(e, torch.zeros_like(m))))  # the condition dropped
    assert masked.shape == (B, L, D) and torch.isfinite(masked).all()
    plain = _model("film", "lstm", ["price", "calendar"])  # no ticker at all: a plain sum
    assert plain.fusion.cond is None and torch.isfinite(plain(**batch)).all()


def _fit(model, batch, steps: int) -> None:
    """Adam, lr 3e-3, on `steps` fresh batches of 64 drawn by batch(n, generator) from seed 0."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        inputs, y = batch(64, g)
        loss = torch.nn.functional.mse_loss(model(**inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("fusion,extra", [("film", "model.encoders.ticker.init_std=1.0"),
                                          ("sum", "model/head=factor")])
def test_a_per_ticker_loading_on_a_shared_series_is_learned(fusion, extra, one_thread):
    """y = b_ticker x s, s a shared series in the exogenous input: a product that FiLM, or the factor
    head with plain sum fusion, makes explicit (sum fusion with the point head: ~0.7 after 60 steps)."""
    torch.manual_seed(0)
    model = _model(fusion, "lstm", ["price", "ticker", "exogenous"], extra).train()
    b = torch.tensor([0.0, 1.0, -1.0, 0.5])

    def batch(n, g):
        s = torch.randn(n, L, 4, generator=g)
        ticker = torch.randint(1, 4, (n,), generator=g)
        inputs = dict(x=torch.randn(n, L, 5, generator=g), ticker=ticker, exog=s,
                      exog_mask=torch.ones(n, L, 4, dtype=torch.bool))
        return inputs, b[ticker] * s[:, -1, 0]

    _fit(model, batch, 60)
    inputs, y = batch(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model.eval()(**inputs)
    assert torch.corrcoef(torch.stack([pred, y]))[0, 1] > 0.9


def test_model_trained_with_news_still_predicts_without_news(one_thread):
    """y = price signal + news sentiment. Trained with modality dropout, the model recovers the price part
    when news is absent and does better with news present."""
    torch.manual_seed(0)
    model = _model("sum", "lstm", ["price", "news"], "model.fusion.modality_dropout=0.3",
                   "model.encoders.news.n_buckets=64").train()
    good, bad = 11, 22  # hashed ids of two sentiment words

    def batch(n, g):
        x = torch.randn(n, L, 5, generator=g)
        sentiment = torch.randint(-1, 2, (n,), generator=g)  # -1, 0 (no news), +1 at the last step
        tokens = torch.zeros(n, L, K, dtype=torch.int32)
        tokens[:, -1, 0] = torch.where(sentiment > 0, good, bad)
        tokens[sentiment == 0] = 0
        y = x[:, -1, 0] + 1.5 * sentiment
        return dict(x=x, ticker=torch.zeros(n, dtype=torch.long), news_tokens=tokens,
                    news_weights=(tokens > 0).float()), y

    _fit(model, batch, 300)
    model.eval()
    inputs, y = batch(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        with_news = model(**inputs)
        without = model(x=inputs["x"], ticker=inputs["ticker"])  # no news keys at all
    corr = lambda p, q: torch.corrcoef(torch.stack([p, q]))[0, 1]  # noqa: E731
    assert torch.isfinite(without).all()
    assert corr(without, inputs["x"][:, -1, 0]) > 0.8  # the price part survives
    assert corr(with_news, y) > corr(without, y) + 0.2  # and news helps when present
