"""HTTP API of the inventory service: the catalogue and its stock."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import text

from events.values import MAX_STOCK, ExternalId, SafeText, UnitPrice, not_blank
from saga_kit.http import DatabaseDep, errors

router = APIRouter(tags=["products"])

ProductId = Annotated[ExternalId, Path()]


class ProductIn(BaseModel):
    """``stock`` sets the units available for sale; reserved and sold units are kept."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[SafeText, Field(min_length=1, max_length=200), AfterValidator(not_blank)]
    #: At most 100,000.00 (events.values: the bound that keeps order totals in range).
    price: UnitPrice
    stock: Annotated[int, Field(strict=True, ge=0, le=MAX_STOCK)]


class ProductView(BaseModel):
    product_id: ExternalId
    name: str
    price: UnitPrice
    available: int
    reserved: int
    sold: int


_COLUMNS = "product_id, name, price, available, reserved, sold"


@router.put(
    "/products/{product_id}",
    summary="Create or update a product",
    response_model=ProductView,
    responses=errors(),
)
async def put_product(product_id: ProductId, body: ProductIn, db: DatabaseDep) -> ProductView:
    """Sets the product's name, unit price and the units available for sale; units
    reserved by sagas in flight and units sold are kept as they are."""
    async with db.unit_of_work() as uow:
        row = (
            await uow.conn.execute(
                text(
                    "INSERT INTO products (product_id, name, price, available)"
                    " VALUES (:p, :n, :price, :stock)"
                    " ON CONFLICT (product_id) DO UPDATE SET name = :n, price = :price,"
                    " available = :stock, updated_at = clock_timestamp()"
                    f" RETURNING {_COLUMNS}"
                ),
                {"p": product_id, "n": body.name, "price": body.price, "stock": body.stock},
            )
        ).one()
    return ProductView.model_validate(row._mapping)


@router.get(
    "/products/{product_id}",
    summary="One product and its stock",
    response_model=ProductView,
    responses=errors({404: "no such product"}),
)
async def get_product(product_id: ProductId, db: DatabaseDep) -> ProductView:
    """Its price and units available, reserved (by sagas in flight) and sold."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM products WHERE product_id = :p"), {"p": product_id}
            )
        ).first()
    if row is None:
        raise HTTPException(404, f"product {product_id!r} not found")
    return ProductView.model_validate(row._mapping)


@router.get("/products", summary="Every product and its stock", response_model=list[ProductView])
async def list_products(db: DatabaseDep) -> list[ProductView]:
    """The whole catalogue, by product id."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT {_COLUMNS} FROM products ORDER BY product_id"))
    return [ProductView.model_validate(r._mapping) for r in rows]
