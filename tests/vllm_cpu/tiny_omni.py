"""Write a tiny random Qwen2.5-Omni checkpoint (thinker weights, processor, tokenizer) to a folder.

Run with the vLLM virtualenv's Python (its transformers has the Omni processor and, through the
shim, torchvision); nothing is downloaded: the byte-level BPE is trained here, the weights are random.
vLLM maps `Qwen2_5OmniForConditionalGeneration` to its thinker, so config.json is a full
`Qwen2_5OmniConfig` without audio output and the weights carry the `thinker.` prefix. The special
tokens, processor classes and chat template are the official model's, so vLLM runs the same
multimodal code path (placeholder expansion, use_audio_in_video interleaving) as for the real teacher.
About 5 s on 2 cores.

  usage: python tiny_omni.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

# The official Qwen2.5-Omni template's layout (system default, media markers, generation prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>",
           "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>"]
NAMED = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
         "vision_eos_token": "<|vision_eos|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
# Words the teacher prompt and the DC answer use, so the BPE merges look like a real tokenizer's.
CORPUS = [
    '{"discrimination": {"cues": {"text": "a", "audio": "b", "visual": "c"}, "summary": "s", "polarity": "positive"}, '
    '"calibration": {"reasoning": "r", "score": 1.5}}',
    "You are an expert annotator of speaker sentiment. Watch the video, listen to the audio and read the transcript. "
    "Explain the visual, acoustic and verbal cues, then give the polarity and a sentiment score from -3.0 to +3.0.",
    "negative neutral positive strongly weakly the speaker says it was great, not bad, terrible, I think that movie",
]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_specific_special_tokens=NAMED)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}

    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)

    text = {"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": False}
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 128,
              "fullatt_block_indexes": [1], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    audio = {"num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "d_model": 64,
             "output_dim": 128}
    thinker = {"text_config": text, "vision_config": vision, "audio_config": audio,
               "audio_token_index": ids["<|AUDIO|>"], "image_token_index": ids["<|IMAGE|>"], "video_token_index": ids["<|VIDEO|>"],
               "vision_start_token_id": ids["<|vision_bos|>"], "vision_end_token_id": ids["<|vision_eos|>"],
               "audio_start_token_id": ids["<|audio_bos|>"], "audio_end_token_id": ids["<|audio_eos|>"],
               "user_token_id": tokenizer.convert_tokens_to_ids("user") or 0}
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    config.save_pretrained(out)

    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config.thinker_config)
    weights = {f"thinker.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()}
    steer(weights, tokenizer)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def steer(weights: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerFast) -> None:
    """Make constrained answers finish: a random model almost never picks the one token that closes a
    JSON string, so every answer would run to max_tokens. Here the next-token logits read one constant
    direction instead: every token embedding carries 8 in dimension 0 (the random layers barely move
    it), the final norm keeps only that dimension, and lm_head's column 0 ranks the tokens: a few words,
    the closing quote and `}` alike (short strings), digits 1-2 lower (a score is one digit, then `}`),
    everything else far below. The grammar still decides what is allowed; this only decides among it."""
    embed = weights["thinker.model.embed_tokens.weight"]
    embed[:, 0] = 8.0
    norm = weights["thinker.model.norm.weight"]
    norm.zero_()
    norm[0] = 1.0
    head = weights["thinker.lm_head.weight"]
    head.zero_()
    for token, score in {'"': 1.0, "}": 1.0, "a": 1.0, "Ġgreat": 1.0, "Ġspeaker": 1.0, "1": 0.5, "2": 0.5}.items():
        head[tokenizer.convert_tokens_to_ids(token), 0] = score


if __name__ == "__main__":
    main(Path(sys.argv[1]))
