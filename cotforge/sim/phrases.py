"""What the simulated teacher says, in English and Chinese: template sentences per polarity and modality.

None of the sentences holds a number, so no answer spells out the gold label, and the text cue quotes
the clip's own transcript so that it visibly refers to the clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cotforge.types import Polarity


@dataclass(frozen=True, slots=True)
class Phrasebook:
    """Template sentences of one language."""

    text: Mapping[Polarity, tuple[str, ...]]
    audio: Mapping[Polarity, tuple[str, ...]]
    visual: Mapping[Polarity, tuple[str, ...]]
    summary: Mapping[Polarity, tuple[str, ...]]
    intensity: tuple[tuple[str, ...], ...]
    """Calibration sentences for neutral, mild, clear and strong answers; `{direction}` is filled in."""
    direction: Mapping[Polarity, str]
    quoted: str
    unquoted: str
    quote_by_words: bool
    """Whether excerpts of the transcript are counted in words (English) or characters (Chinese)."""
    quote_limit: int
    lead: tuple[str, ...]
    refusal: tuple[str, ...]

    def quote(self, transcript: str) -> str:
        """The start of the transcript, quoted, so that the text cue visibly refers to this clip."""
        if not transcript:
            return self.unquoted
        units = transcript.split() if self.quote_by_words else list(transcript)
        joiner = " " if self.quote_by_words else ""
        excerpt = joiner.join(units[: self.quote_limit]) + ("…" if len(units) > self.quote_limit else "")
        return self.quoted.format(excerpt)


P, N, U = Polarity.POSITIVE, Polarity.NEGATIVE, Polarity.NEUTRAL

ENGLISH = Phrasebook(
    text={
        P: ("The wording of {quote} is approving: the speaker judges the subject favourably.",
            "In {quote} the speaker uses praising, upbeat words without hedging or sarcasm."),
        N: ("The wording of {quote} is critical: the speaker judges the subject unfavourably.",
            "In {quote} the speaker uses complaining, disappointed words with no sign of irony."),
        U: ("The wording of {quote} is mostly factual, with few evaluative words.",
            "In {quote} the speaker describes rather than judges; praise and criticism are both absent."),
    },
    audio={
        P: ("The voice is lively, pitch rises at the ends of phrases and the pace is brisk.",
            "An energetic, warm delivery with short pauses and some emphasis on the key words."),
        N: ("The tone is flat and low, the pace slows down and there are audible sighs.",
            "Pitch and loudness drop, with hesitant pauses between phrases."),
        U: ("The voice stays even in pitch and loudness at a steady pace.",
            "A calm, monotone delivery without marked emphasis."),
    },
    visual={
        P: ("The speaker smiles, the brows are relaxed and the head nods along.",
            "An open posture, bright eyes and a visible smile while speaking."),
        N: ("The mouth corners turn down, the brows draw together and the gaze drops.",
            "A frown and a tense jaw, with the head shaking slightly."),
        U: ("A relaxed, mostly expressionless face with a steady gaze at the camera.",
            "Little facial movement and few gestures; the posture stays neutral."),
    },
    summary={
        P: ("Text, voice and face all point the same way, so the overall sentiment is positive.",
            "The favourable words are backed by an upbeat voice and a smile; the clip is positive overall."),
        N: ("The critical words are matched by a low voice and a frown, so the overall sentiment is negative.",
            "All three modalities convey dissatisfaction; the clip is negative overall."),
        U: ("No modality leans clearly either way, so the overall sentiment is neutral.",
            "The cues are weak and balanced; the clip is neutral overall."),
    },
    intensity=(
        ("Positive and negative signals are both faint and roughly cancel out, so the score stays close to zero.",
         "There is hardly any emotional colouring in the words, voice or face, so the intensity is minimal."),
        ("The {direction} lean is present but restrained: the words carry it while voice and face stay calm, "
         "so the intensity is mild.",),
        ("The {direction} sentiment is clear in the words and supported by the voice without being extreme, "
         "so the intensity is moderate.",),
        ("The {direction} sentiment is emphatic in every modality, with strong wording and marked vocal and "
         "facial expression, so the intensity is high.",),
    ),
    direction={P: "positive", N: "negative", U: "neutral"},
    quoted='the line "{}"',
    unquoted="the transcript",
    quote_by_words=True,
    quote_limit=8,
    lead=("Here is my analysis of the clip.",
          "Based on the video, the audio and the transcript, my judgement is as follows."),
    refusal=("I'm sorry, but the face is barely visible and the audio is muffled, so I cannot give a reliable "
             "sentiment judgement for this clip.",),
)

CHINESE = Phrasebook(
    text={
        P: ("{quote}中的用词带有明显的肯定和赞赏，说话人对对象评价正面。",
            "{quote}使用了积极、轻快的措辞，没有否定或反讽。"),
        N: ("{quote}中的用词带有批评和失望，说话人对对象评价负面。",
            "{quote}里出现了抱怨性的表达，语气中透着不满。"),
        U: ("{quote}以陈述事实为主，几乎没有评价性词语。",
            "{quote}只是描述情况，既无赞扬也无批评。"),
    },
    audio={
        P: ("声音轻快有力，句尾音调上扬，语速较快。", "语气温和而有活力，停顿短促。"),
        N: ("语调低沉平淡，语速放慢，能听到叹气。", "音高和音量都偏低，句子之间有犹豫的停顿。"),
        U: ("音高和音量保持平稳，语速均匀。", "语气平静单调，没有明显的重音。"),
    },
    visual={
        P: ("说话人面带微笑，眉头舒展，频频点头。", "姿态放松，眼神明亮，说话时笑容明显。"),
        N: ("嘴角下垂，眉头紧锁，目光低垂。", "皱着眉头，下颌紧绷，轻轻摇头。"),
        U: ("面部放松，基本没有表情，目光平视镜头。", "面部动作和手势都很少，姿态保持中立。"),
    },
    summary={
        P: ("文本、声音和表情方向一致，整体情感为积极。", "肯定的措辞得到轻快语气和笑容的支持，整体偏积极。"),
        N: ("批评性的措辞与低沉的声音和皱眉相互印证，整体情感为消极。", "三个模态都传达出不满，整体偏消极。"),
        U: ("各模态都没有明显的倾向，整体情感为中性。", "线索微弱且相互抵消，整体为中性。"),
    },
    intensity=(
        ("积极和消极的信号都很微弱，大致相互抵消，因此分数接近零。", "文字、声音和表情几乎没有情绪色彩，强度很低。"),
        ("{direction}倾向存在但较为克制：主要体现在措辞上，声音和表情比较平静，因此强度较弱。",),
        ("{direction}情感在措辞中很明确，并得到声音的支持，但并不极端，因此强度中等。",),
        ("{direction}情感在所有模态中都很强烈，措辞激烈，声音和表情变化明显，因此强度很高。",),
    ),
    direction={P: "积极", N: "消极", U: "中性"},
    quoted="台词“{}”",
    unquoted="台词",
    quote_by_words=False,
    quote_limit=12,
    lead=("以下是我的分析。", "根据视频、音频和台词，我的判断如下。"),
    refusal=("抱歉，这段视频的画面和声音都不够清晰，我无法给出可靠的情感判断。",),
)

PHRASEBOOKS = {"en": ENGLISH, "zh": CHINESE}
