"""Request and response bodies of the JSON API (they are what /openapi.json documents)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Progress(BaseModel):
    step: int = Field(description="training steps done")
    total: int = Field(description="training steps in all (0 until the method reports)")
    fraction: float = Field(description="step / total, 0 when total is unknown")


class Job(BaseModel):
    id: str
    kind: Literal["tune"]
    status: Literal["queued", "running", "done", "failed"]
    concept: str = Field(description="name the concept gets when the job finishes")
    method: str
    class_noun: str
    model: str
    steps: int | None = Field(description="requested training steps; null: the method's default")
    config: dict | None = Field(description="method settings the job was given")
    identifier: str | None = Field(description="token the concept is trained under; null: the method's default")
    n_images: int
    progress: Progress
    attempts: int = Field(description="times a worker started the job (2+ after a resume)")
    error: str | None = Field(description="why the job failed")
    note: str | None = Field(description="what happened to it, e.g. interrupted by a restart and resumed")
    created: float
    started: float | None
    finished: float | None
    url: str


class Concept(BaseModel):
    name: str
    method: str
    class_noun: str
    model: str = Field(description="base model the concept was made for")
    job_id: str | None
    created: float
    prompt_token: str = Field(description="write this in a prompt to use the concept, e.g. '<bruno>'")
    artifact_url: str
    webui_url: str | None = Field(None, description="zip of the concept as AUTOMATIC1111 / ComfyUI files (a "
                                  "kohya-layout LoRA and/or an A1111 embedding, as `boothkit export` writes); null "
                                  "for methods that have none (InstantBooth)")
    curves_url: str | None = Field(None, description="PNG of the training curves (loss, learning rate); null for "
                                   "concepts made without training (InstantBooth)")


class ConceptCreated(BaseModel):
    concept: str
    job: Job
    warnings: list[str] = Field(default_factory=list, description="one line each: a photo skipped (blank) and why; "
                                "on the world model, a class noun it never read or photos unlike its scenes")


class Rename(BaseModel):
    name: str = Field(description="the new name (1-40 of a-z 0-9 _ -)")


class Methods(BaseModel):
    methods: list[str] = Field(description="methods this server offers, the default first")
    default: str | None = Field(description="InstantBooth if offered, else the fastest offered; null if none")


class GenerateRequest(BaseModel):
    prompt: str = Field(description="what to draw; <name> uses concept `name` from the library, <name:0.7> at "
                                    "weight 0.7 (LoRA and E4T concepts; 0 to 2, default 1)")
    concepts: list[str] = Field(default_factory=list,
                                description="concepts to use (those written as <name> in the prompt are added)")
    negative_prompt: str | None = None
    n: int = Field(1, description="number of images; image i uses seed + i")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="base seed; null: a random one (returned)")
    steps: int = Field(20, description="denoising steps")
    guidance: float = Field(5.0, ge=0.0, le=30.0, description="classifier-free guidance scale")
    scheduler: str | None = Field(None, description="sampler (one of /api/health's schedulers); null: the model's own")
    width: int | None = Field(None, description="default: the model's native size")
    height: int | None = Field(None, description="default: the model's native size")
    response: Literal["url", "base64", "both"] = Field("url", description="how images come back")


class Image(BaseModel):
    id: str
    url: str
    prompt: str
    model_prompt: str = Field(description="the prompt the model saw, with <name> replaced")
    seed: int
    steps: int
    guidance: float
    scheduler: str | None = None
    width: int
    height: int
    negative_prompt: str | None
    concepts: list[str]
    concept_weights: list[float] | None = Field(None, description="the concepts' weights, when one is not 1")
    model: str
    base64_png: str | None = None


class GenerateResponse(BaseModel):
    images: list[Image]
    seed: int


class Health(BaseModel):
    ok: bool
    model: str
    family: str = Field(description="the base model's family, e.g. 'Stable Diffusion XL'")
    methods: list[str]
    schedulers: list[str] = Field(description="samplers a generate request may name (null: the model's own)")
    queued: int
    running: int
