"""A small FastAPI app for the benchmark runner: what users of a framework feel of the server.

Two routes, as a typical JSON API has them: a POST whose JSON body is validated into a pydantic model,
and a GET with a path parameter (and an optional query parameter). The answers are small JSON documents
built by FastAPI from the return values. Any other path (the runner's readiness probe uses the routes
themselves) gets FastAPI's 404.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1
    tags: list[str] = []


class Receipt(BaseModel):
    name: str
    total: float
    tags: int


app = FastAPI()


@app.post("/items")
async def create_item(item: Item) -> Receipt:
    return Receipt(name=item.name, total=item.price * item.quantity, tags=len(item.tags))


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, int | str | None]:
    return {"item_id": item_id, "q": q}
