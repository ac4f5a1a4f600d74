"""The public HTTP contract (web app and Chrome extension). Change only additively."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

GenerationStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class SignupCreate(BaseModel):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    password: str = Field(min_length=8, max_length=256)


class LoginCreate(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=256)


class UserPublic(BaseModel):
    id: UUID
    email: str


class SignupPublic(BaseModel):
    token: str
    user: UserPublic


class LoginPublic(BaseModel):
    token: str


class MePublic(BaseModel):
    id: UUID
    email: str
    balance: int


class GenerationCreated(BaseModel):
    id: UUID
    status: GenerationStatus
    events_url: str


class GenerationPublic(BaseModel):
    id: UUID
    status: GenerationStatus
    step: str | None
    error: str | None
    character_id: UUID | None


class CharacterAssets(BaseModel):
    webm: str = Field(description="Transparent VP9 WebM (Chrome, Firefox, Edge)")
    webp: str = Field(description="Animated WebP fallback with alpha")
    png: str = Field(description="Transparent PNG poster (first frame)")


class CharacterPublic(BaseModel):
    id: UUID
    prompt: str
    created_at: datetime
    assets: CharacterAssets


class CharacterList(BaseModel):
    characters: list[CharacterPublic]
