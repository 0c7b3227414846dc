from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from gateway.staff.repository import InvitationRow, MerchantRow, StaffRow
from shared.auth import MerchantRole
from shared.text import SafeStr

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")


def normal_email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError("must be an email address")
    return value


def normal_phone(value: str) -> str:
    """Digits only, the country code first (``+86 138-0000-0000`` -> ``8613800000000``)."""
    value = re.sub(r"[\s()-]", "", value)
    if not _PHONE.match(value):
        raise ValueError("must be a phone number: digits with the country code")
    return value.lstrip("+")


Email = Annotated[SafeStr, Field(max_length=254), AfterValidator(normal_email)]
Phone = Annotated[SafeStr, Field(max_length=32), AfterValidator(normal_phone)]
Name = Annotated[SafeStr, Field(min_length=1, max_length=100)]
Password = Annotated[str, Field(min_length=10, max_length=128)]


class Person(BaseModel):
    """Someone to invite: a name, and the email or phone they will sign in with."""

    name: Name
    email: Email | None = None
    phone: Phone | None = None

    @model_validator(mode="after")
    def _has_login(self) -> Person:
        if self.email is None and self.phone is None:
            raise ValueError("an email or a phone number is needed to sign in")
        return self


class StaffInvite(Person):
    merchant_id: SafeStr | None = Field(
        None, max_length=100, description="Admins name the merchant; staff invite to their own"
    )
    role: MerchantRole


class MerchantCreate(BaseModel):
    name: Annotated[SafeStr, Field(min_length=1, max_length=200)]
    contact_name: Name | None = None
    contact_email: Email | None = None
    contact_phone: Phone | None = None
    owner: Person = Field(description="The first staff member, invited as the owner")


class MerchantUpdate(BaseModel):
    name: Annotated[SafeStr, Field(min_length=1, max_length=200)] | None = None
    status: Literal["active", "suspended"] | None = None
    contact_name: Name | None = None
    contact_email: Email | None = None
    contact_phone: Phone | None = None


class MerchantOut(BaseModel):
    id: str
    name: str
    status: str
    contact_name: str | None
    contact_email: str | None
    contact_phone: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: MerchantRow) -> MerchantOut:
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            contact_name=row.contact_name,
            contact_email=row.contact_email,
            contact_phone=row.contact_phone,
            created_at=row.created_at,
        )


class InvitationOut(BaseModel):
    staff_id: str
    invitation_token: str = Field(
        description="Shown once: pass it to the invitee, who sets a password with it"
    )
    expires_at: datetime

    @classmethod
    def of(cls, invitation: InvitationRow) -> InvitationOut:
        return cls(
            staff_id=invitation.staff_id,
            invitation_token=invitation.token,
            expires_at=invitation.expires_at,
        )


class MerchantCreated(MerchantOut):
    owner_invitation: InvitationOut


class StaffOut(BaseModel):
    id: str
    merchant_id: str | None
    name: str
    email: str | None
    phone: str | None
    role: str
    status: str
    created_at: datetime

    @classmethod
    def of(cls, row: StaffRow) -> StaffOut:
        return cls(
            id=row.id,
            merchant_id=row.merchant_id,
            name=row.name,
            email=row.email,
            phone=row.phone,
            role=row.role,
            status=row.status,
            created_at=row.created_at,
        )


class StaffInvited(StaffOut):
    invitation: InvitationOut


class RoleChange(BaseModel):
    role: MerchantRole


class AcceptInvitation(BaseModel):
    invitation_token: SafeStr = Field(min_length=1, max_length=200)
    password: Password


class StaffLogin(BaseModel):
    login: SafeStr = Field(min_length=1, max_length=254, description="Email or phone number")
    password: Annotated[str, Field(min_length=1, max_length=128)]
