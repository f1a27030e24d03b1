"""Property tests of grammar.shell: robustness and invariants of BuildKit's word rules."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.grammar import DockerfileError
from lamina.grammar.shell import expand, referenced_names, split_words

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Go's unicode.IsSpace
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" \
           "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

# text rich in everything the lexer treats specially
SPECIAL = list("${}:-+?#%/\\'\"`<*.[]@!0123 \t\n_aAbB") + ["é", "한", "\ufeff", "\x00"]
tricky_text = st.text(alphabet=st.sampled_from(SPECIAL) | st.characters(), max_size=40)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
envs = st.dictionaries(names, st.text(alphabet=st.sampled_from(SPECIAL), max_size=8),
                       max_size=4)
escapes = st.sampled_from(["\\", "`"])


@SETTINGS
@given(word=tricky_text, env=envs, escape=escapes)
def test_only_dockerfile_errors_escape(word, env, escape):
    for call in (expand, split_words):
        try:
            result = call(word, env, escape=escape)
        except DockerfileError as exc:
            assert exc.message.startswith("failed to process ")
        else:
            assert isinstance(result, (str, list))


@SETTINGS
@given(word=tricky_text, escape=escapes)
def test_referenced_names_only_raises_dockerfile_errors(word, escape):
    try:
        assert isinstance(referenced_names(word, escape), frozenset)
    except DockerfileError:
        pass


@SETTINGS
@given(word=tricky_text, env=envs, escape=escapes)
def test_deterministic(word, env, escape):
    def run(call):
        try:
            return call(word, dict(env), escape=escape)
        except DockerfileError as exc:
            return ("error", exc.message)

    assert run(expand) == run(expand)
    assert run(split_words) == run(split_words)


plain_chars = st.characters(blacklist_characters="$'\"\\`\ufeff")


@SETTINGS
@given(word=st.text(alphabet=plain_chars, max_size=40), env=envs, escape=escapes)
def test_plain_word_is_unchanged(word, env, escape):
    # no $, no quote, no escape token (and no leading BOM): nothing to process
    assert expand(word, env, escape=escape) == word


@SETTINGS
@given(text=st.text(alphabet=st.characters(blacklist_characters="'"), max_size=40),
       env=envs, escape=escapes)
def test_single_quotes_keep_text_literally(text, env, escape):
    assert expand("'" + text + "'", env, escape=escape) == text
    assert split_words("'" + text + "'", env, escape=escape) == ([text] if text else [])


@SETTINGS
@given(text=st.text(max_size=40), escape=escapes)
def test_escaping_every_character_yields_the_text(text, escape):
    word = "".join(escape + ch for ch in text)
    assert expand(word, {}, escape=escape) == text
    assert split_words(word, {}, escape=escape) == ([text] if text else [])


safe_word = st.text(
    alphabet=st.characters(blacklist_characters="$'\"\\`<\ufeff" + GO_SPACE,
                           blacklist_categories=("Cs",)),
    min_size=1, max_size=12)


@SETTINGS
@given(words=st.lists(safe_word, max_size=6),
       seps=st.lists(st.text(alphabet=st.sampled_from(list(" \t\n\u3000")), min_size=1,
                             max_size=3), min_size=7, max_size=7))
def test_split_words_gives_back_joined_words(words, seps):
    text = seps[0] + "".join(w + seps[i + 1] for i, w in enumerate(words))
    assert split_words(text, {}) == words


@SETTINGS
@given(value=st.text(max_size=30), name=names)
def test_double_quoted_expansion_is_the_value(value, name):
    env = {name: value}
    assert expand('"${' + name + '}"', env) == value
    assert expand("${" + name + "}", env) == value
    assert split_words('"$' + name + '"', env) == ([value] if value else [])


@SETTINGS
@given(value=st.text(max_size=30), name=names)
def test_unquoted_expansion_splits_on_go_spaces(value, name):
    pieces, current = [], ""
    for ch in value:
        if ch in GO_SPACE:
            if current:
                pieces.append(current)
            current = ""
        else:
            current += ch
    if current:
        pieces.append(current)
    assert split_words("$" + name, {name: value}) == pieces


blankless = st.text(alphabet=st.sampled_from([c for c in SPECIAL if c not in " \t\n"]),
                    max_size=30)


@SETTINGS
@given(word=blankless,
       env=st.dictionaries(names, st.text(alphabet="ab$'\"\\", max_size=5), max_size=4))
def test_without_blanks_split_words_is_expand(word, env):
    try:
        single = expand(word, env)
    except DockerfileError:
        with pytest.raises(DockerfileError):
            split_words(word, env)
        return
    assert split_words(word, env) == ([single] if single else [])


@SETTINGS
@given(word=tricky_text, env=envs)
def test_referenced_names_cover_every_lookup(word, env):
    seen: set[str] = set()

    class Recording(dict):
        def __contains__(self, key):
            seen.add(key)
            return super().__contains__(key)

    try:
        expand(word, Recording(env))
    except DockerfileError:
        return
    assert seen == referenced_names(word)
