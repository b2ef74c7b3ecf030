"""MODAProcessor: odd images become clean RGB pixels, bad input fails clearly, sequences are laid out for MODA."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo
from processing import load_rgb_image, processing_moda
from processing.data import MODACollator
from processing.processing_moda import CHAT_TEMPLATE


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (30, 20), (255, 0, 0, 0)),
        Image.new("LA", (30, 20), (10, 0)),
        Image.new("P", (30, 20), 3),
        Image.new("CMYK", (30, 20), (0, 255, 255, 0)),
        Image.new("L", (30, 20), 128),
        Image.new("1", (30, 20), 1),
        Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)),
        Image.fromarray(np.full((20, 30), 0.5, dtype=np.float32)),
        np.zeros((20, 30, 3), dtype=np.uint8),
        np.ones((3, 20, 30), dtype=np.float32) * 0.25,
        np.full((20, 30, 4), 200, dtype=np.uint8),
        Image.new("RGB", (1, 1), (0, 128, 0)),
        Image.new("RGB", (6000, 40), (0, 0, 255)),
    ],
    ids=["RGBA", "LA", "P", "CMYK", "L", "1-bit", "I;16", "F", "array", "CHW-float", "RGBA-array", "1x1", "huge"],
)
def test_any_image_becomes_rgb_pixels(tiny_processor, image):
    rgb = load_rgb_image(image)
    assert rgb.mode == "RGB" and max(rgb.size) <= 4096
    pixel_values = tiny_processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    assert np.isfinite(pixel_values.numpy()).all()


def test_transparent_pixels_are_laid_on_white():
    assert load_rgb_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb_image(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_images_are_rescaled_not_clipped():
    grey = load_rgb_image(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)))
    assert grey.getpixel((0, 0)) == (255, 255, 255)  # its own maximum maps to white
    ramp = np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (4, 1))
    values = np.asarray(load_rgb_image(Image.fromarray(ramp)))[0, :, 0]
    assert (np.diff(values.astype(int)) > 0).all()


@pytest.mark.parametrize(
    "content, message",
    [(b"", "cannot read"), (b"not an image at all", "cannot read"), (None, "no such image file")],
)
def test_unreadable_files_name_the_file(tmp_path, tiny_processor, content, message):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        tiny_processor(images=[make_photo(0), path])
    assert "broken.jpg" in str(error.value) and "image 1" in str(error.value)


def test_truncated_jpeg_is_rejected(tmp_path):
    path = tmp_path / "cut.jpg"
    make_photo(0, size=(200, 200)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_rgb_image(path)


@pytest.mark.parametrize(
    "image, message",
    [(np.zeros((5, 5, 7)), "array"), (np.full((4, 4), np.nan), "NaN"), ("x" * 0, "no such image"), (42, "int")],
)
def test_bad_arrays_and_types(image, message):
    with pytest.raises(ValueError, match=message):
        load_rgb_image(image)


def test_mismatched_batch_sizes_and_empty_targets(tiny_processor, photos):
    with pytest.raises(ValueError, match="2 images but 3 texts"):
        tiny_processor(images=photos[:2], text=["a", "b", "c"])
    with pytest.raises(ValueError, match="empty"):
        tiny_processor(images=photos[:2], text=["A red dress.", "  "], return_labels=True)
    with pytest.raises(ValueError, match="needs images, text"):
        tiny_processor()
    with pytest.raises(ValueError, match="empty list"):
        tiny_processor(images=[])


def test_sequence_layout_is_left_padded_image_bos_text_eos(tiny_processor, photos):
    tokenizer = tiny_processor.tokenizer
    batch = tiny_processor(images=photos[:2], text=["A red dress.", "Black casual shoes for men."], return_labels=True)
    short, long = batch["input_ids"].tolist()
    mask = batch["attention_mask"][0].tolist()
    pads = mask.index(1)
    assert pads > 0 and short[:pads] == [tokenizer.pad_token_id] * pads and all(mask[pads:])
    assert short[pads:pads + 2] == [tiny_processor.image_token_id, tokenizer.bos_token_id]
    assert short[-1] == long[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(short[pads + 2:-1]) == "A red dress."
    assert batch["labels"][0, pads + 2:].tolist() == short[pads + 2:]


def test_generation_prompt_is_image_then_bos(tiny_processor, photos):
    batch = tiny_processor(images=photos[0])
    assert batch["input_ids"].tolist() == [[tiny_processor.image_token_id, tiny_processor.tokenizer.bos_token_id]]
    assert "labels" not in batch


def test_max_length_counts_the_whole_sequence_and_keeps_the_eos(tiny_processor, photos):
    batch = tiny_processor(images=photos[0], text="A navy blue men's checked shirt", return_labels=True, max_length=5)
    assert batch["input_ids"].shape[1] == 5  # image, BOS, 2 text tokens, EOS
    assert batch["input_ids"][0, -1] == tiny_processor.tokenizer.eos_token_id
    uncut = tiny_processor(images=photos[0], text="A navy blue men's checked shirt", max_length=5, truncation=False)
    assert uncut["input_ids"].shape[1] > 5
    with pytest.raises(ValueError, match="no room for the 2 image and BOS tokens"):
        tiny_processor(images=photos[0], text="A navy", return_labels=True, max_length=2)
    # the training collator's max_length stays a description budget (train_hf.py --max_length)
    collated = MODACollator(tiny_processor, max_length=3)([{"description": "A navy blue men's checked shirt",
                                                            "image_embeds": np.zeros((1, 4), dtype=np.float32)}])
    assert collated["input_ids"].shape[1] == tiny_processor.prefix_length + 3


def test_batch_decode_returns_clean_descriptions(tiny_processor, photos):
    batch = tiny_processor(images=photos[:2], text=["A red dress.", "Black casual shoes for men."], add_eos=True)
    assert tiny_processor.batch_decode(batch["input_ids"]) == ["A red dress.", "Black casual shoes for men."]


def test_patch_token_processor_writes_one_placeholder_per_patch(tiny_processor, photos):
    processor = type(tiny_processor)(tiny_processor.image_processor, tiny_processor.tokenizer, num_image_tokens=17)
    ids = processor(images=photos[0])["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == 17


def test_round_trip(tmp_path, tiny_processor, photos):
    tiny_processor.save_pretrained(tmp_path)
    loaded = type(tiny_processor).from_pretrained(tmp_path)
    original, reloaded = (p(images=photos, text=["A red"] * 4) for p in (tiny_processor, loaded))
    assert original.keys() == reloaded.keys()
    for key in original:
        assert (original[key] == reloaded[key]).all()


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "poster.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 90,000 pixels is then more than twice the limit
    with pytest.raises(ValueError, match="too many pixels"):
        load_rgb_image(path)


def test_large_jpeg_is_decoded_small(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (9000, 300), (200, 10, 10)).save(path)
    image = load_rgb_image(path)
    assert max(image.size) <= 4096 and image.getpixel((10, 10))[0] > 150


# --- tokenizer arguments, image sources, chat template ----------------------------------------------------------------


def test_tokenizer_arguments_are_honoured(tiny_processor, photos):
    texts = ["A red dress.", "Black casual shoes for men."]
    padded = tiny_processor(images=photos[:2], text=texts, padding="max_length", max_length=16)
    assert padded["input_ids"].shape == (2, 16) and padded["attention_mask"][:, 0].sum() == 0
    longest = tiny_processor(images=photos[:2], text=texts)
    multiple = tiny_processor(images=photos[:2], text=texts, pad_to_multiple_of=8)
    assert multiple["input_ids"].shape[1] % 8 == 0 and multiple["input_ids"].shape[1] > longest["input_ids"].shape[1]
    assert (multiple["input_ids"][:, -longest["input_ids"].shape[1]:] == longest["input_ids"]).all()
    nested = tiny_processor(images=photos[:2], text=texts, text_kwargs={"padding": "max_length", "max_length": 16})
    assert torch.equal(nested["input_ids"], padded["input_ids"])
    resized = tiny_processor(images=photos[0], size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    assert resized["pixel_values"].shape == (1, 3, 16, 16)
    assert isinstance(tiny_processor(images=photos[0], return_tensors=None)["input_ids"], list)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"txt": "A red"}, "unknown argument 'txt'"),
        ({"return_offsets_mapping": True}, "unknown argument 'return_offsets_mapping'"),
        ({"padding_side": "right"}, "pads on the left"),
        ({"videos": [np.zeros((2, 8, 8, 3))]}, "images and text only"),
    ],
)
def test_arguments_it_cannot_honour_are_refused(tiny_processor, photos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor(images=photos[0], **kwargs)


def test_urls_go_through_transformers_load_image(monkeypatch, tiny_processor):
    fetched = []
    photo = make_photo(3)
    monkeypatch.setattr(processing_moda, "load_image", lambda source: fetched.append(source) or photo)
    pixel_values = tiny_processor(images="https://example.com/dress.jpg")["pixel_values"]
    assert fetched == ["https://example.com/dress.jpg"]
    assert torch.equal(pixel_values, tiny_processor(images=photo)["pixel_values"])
    monkeypatch.setattr(processing_moda, "load_image", lambda source: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(ValueError, match="image 0: cannot load 'https://example.com/gone.jpg'.*offline"):
        tiny_processor(images="https://example.com/gone.jpg")


@pytest.mark.parametrize("prefix", ["data:image/png;base64,", ""])
def test_base64_images_are_decoded(tiny_processor, prefix):
    photo = make_photo(4)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    encoded = prefix + base64.b64encode(buffer.getvalue()).decode()
    assert np.array_equal(np.asarray(load_rgb_image(encoded)), np.asarray(photo))
    with pytest.raises(ValueError, match="cannot load"):
        load_rgb_image(prefix + "A" * 80)


def test_arrays_are_read_channels_last_first():
    grey_alpha = np.zeros((4, 4, 2), dtype=np.uint8)
    grey_alpha[..., 0] = 200  # grey 200, fully transparent: white once laid on white
    assert load_rgb_image(grey_alpha).size == (4, 4)
    assert load_rgb_image(grey_alpha).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb_image(np.zeros((3, 20, 30), dtype=np.uint8)).size == (30, 20)  # unambiguous channels-first
    assert load_rgb_image(np.zeros((4, 20, 3), dtype=np.uint8)).size == (20, 4)  # channels-last wins


def test_nested_images_are_one_per_sequence(tiny_processor, photos):
    nested = tiny_processor(images=[[photos[0]], [photos[1]]], text=["", ""])
    assert torch.equal(nested["pixel_values"], tiny_processor(images=photos[:2])["pixel_values"])
    with pytest.raises(ValueError, match="sequence 0 has 2 images"):
        tiny_processor(images=[[photos[0], photos[1]]], text=[""])


def test_prompts_holding_the_image_token_are_whole_prompts(tiny_processor, photos):
    bos = tiny_processor.tokenizer.bos_token
    whole = tiny_processor(images=photos[0], text=f"<image>{bos}A red")
    assert torch.equal(whole["input_ids"], tiny_processor(images=photos[0], text="A red")["input_ids"])
    patches = type(tiny_processor)(tiny_processor.image_processor, tiny_processor.tokenizer, num_image_tokens=3)
    assert patches(images=photos[0], text=f"<image>{bos}A")["input_ids"][0].tolist().count(patches.image_token_id) == 3
    with pytest.raises(ValueError, match="hold several <image>"):
        tiny_processor(images=photos[0], text="<image><image>")


def test_chat_template_is_saved_and_given_to_older_processors(tmp_path, tiny_processor, photos):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " A red "}]},
        {"role": "assistant", "content": [{"type": "text", "text": "dress"}]},
    ]
    bos = tiny_processor.tokenizer.bos_token
    assert tiny_processor.apply_chat_template(messages) == f"<image>{bos}A red dress"
    assert tiny_processor.apply_chat_template([{"role": "user", "content": "A red"}]) == f"{bos}A red"
    tiny_processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    (tmp_path / "chat_template.jinja").unlink()  # as a processor saved before MODA had a template
    assert type(tiny_processor).from_pretrained(tmp_path).chat_template == CHAT_TEMPLATE
