"""Customers: found or created by their WeChat account, linked across apps by unionid."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.customers import repository as repo
from gateway.wechat import PhoneNumber, WeChatSession

__all__ = ["SignIn", "sign_in"]


@dataclass(frozen=True, slots=True)
class SignIn:
    customer_id: str
    created: bool


async def sign_in(
    session: AsyncSession, *, app_id: str, wechat: WeChatSession, phone: PhoneNumber | None
) -> SignIn:
    """The customer of this WeChat account: the account's, else the one its unionid names
    (the same person in another app of the same open-platform account), else a new one."""
    await repo.lock_identity(session, wechat.unionid or f"{app_id}:{wechat.openid}")
    account = await repo.get_account(session, app_id, wechat.openid)
    created = False
    if account is not None:
        customer_id = account.customer_id
        await repo.touch_account(
            session,
            app_id=app_id,
            openid=wechat.openid,
            unionid=wechat.unionid,
            session_key=wechat.session_key,
        )
        if wechat.unionid is not None:
            await repo.learn_unionid(session, customer_id, wechat.unionid)
    else:
        linked = await repo.customer_by_unionid(session, wechat.unionid) if wechat.unionid else None
        if linked is None:
            customer_id = f"cus_{uuid.uuid4().hex}"
            await repo.insert_customer(session, customer_id, wechat.unionid)
            created = True
        else:
            customer_id = linked
        await repo.insert_account(
            session,
            app_id=app_id,
            openid=wechat.openid,
            customer_id=customer_id,
            unionid=wechat.unionid,
            session_key=wechat.session_key,
        )
    if phone is not None:
        await repo.set_phone(
            session, customer_id, phone=phone.number, country_code=phone.country_code
        )
    return SignIn(customer_id=customer_id, created=created)
