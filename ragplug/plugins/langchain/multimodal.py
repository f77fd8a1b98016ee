"""Retrieved pages handed to a multimodal chat model, in LangChain's standard message content blocks.

ColPali retrieves page images; a vision-language chat model (any LangChain ``BaseChatModel`` that takes
images) then answers from them. :func:`page_images_message` builds the ``HumanMessage``: the question, then
for each page a text block naming it (source, page) and an image block (base64 PNG), with langchain-core's
own block constructors, so every chat model integration that reads standard blocks understands it.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.messages.content import ContentBlock, create_image_block, create_text_block

from ragplug.errors import InvalidInputError
from ragplug.retrievers.colpali.pages import CHAT_IMAGE_SIDE, IMAGE_KEY, page_image_base64

__all__ = ["page_images_message"]


def page_images_message(
    question: str, documents: Sequence[Document], *, max_side: int = CHAT_IMAGE_SIDE
) -> HumanMessage:
    """A message asking ``question`` about the retrieved pages: their images (from ``metadata["image_base64"]``
    when the retriever included them, else re-rendered from the page's ``image`` reference) and a line
    naming each. Documents without a page image are refused: this is for page retrieval."""
    if not isinstance(question, str) or not question.strip():
        msg = f"the question must be a non-empty string, got {question!r:.80}"
        raise InvalidInputError(msg)
    blocks: list[ContentBlock] = [create_text_block(question)]
    for doc in documents:
        meta = doc.metadata
        data = page_image_base64(meta, max_side=max_side)
        if data is None:
            msg = f"document {doc.id!r} has no page image (metadata 'image' or '{IMAGE_KEY}')"
            raise InvalidInputError(msg)
        where = f"page {meta.get('page', '?')} of {meta.get('source', doc.id)}"
        blocks.append(create_text_block(f"[{where}]"))
        blocks.append(create_image_block(base64=data, mime_type="image/png"))
    return HumanMessage(content_blocks=blocks)
