"""Cluster routes: the unknown faces grouped into clusters by a background job (start it, list the clusters, one
with its faces), and what a person does with one: name it (its faces get a subject), merge it into another, take
a face out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from app.api.contract import errors
from app.api.deps import get_people
from app.api.people_schemas import (
    CLUSTER_ID_RULE,
    ClusterDetailOut,
    ClusterListOut,
    ClusterMergeIn,
    ClusterNameIn,
    SubjectOut,
    cluster_detail_out,
    cluster_out,
    subject_out,
)
from app.api.upload import run_blocking
from app.errors import StoreUnavailable
from app.ingest.model import JobOut
from app.people import Clusters

router = APIRouter(tags=["clusters"])

ClusterId = Annotated[str, Path(max_length=64, description="the cluster's id", json_schema_extra=CLUSTER_ID_RULE)]


def get_clusters(request: Request) -> Clusters:
    """People's clusters (WORKERS > 1: the core's, each call crossing its socket, app.core.RemotePeople)."""
    clusters = get_people(request).clusters
    if clusters is None:  # a People made without app.bootstrap's wiring
        raise StoreUnavailable("the clusters of this service are not set up")
    return clusters


ClustersDep = Annotated[Clusters, Depends(get_clusters)]


@router.post("/api/clusters", response_model=JobOut, status_code=202, responses=errors(400, 422, 503, 504))
async def start_clustering(request: Request, clusters: ClustersDep) -> JobOut:
    """Group the faces without a subject into clusters, in the background: a clustering job (kind `cluster`), or
    the one already pending or running. Incremental: faces already clustered keep their cluster; follow it with
    GET /api/jobs/{id}, cancel it with DELETE /api/jobs/{id}."""
    return (await run_blocking(request, clusters.start)).to_out()


@router.get("/api/clusters", response_model=ClusterListOut, responses=errors(422, 503, 504))
async def list_clusters(
    request: Request,
    clusters: ClustersDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    min_size: Annotated[int, Query(ge=0, le=1_000_000, description="only clusters of at least this many faces")] = 0,
) -> ClusterListOut:
    """The clusters, largest first, with sample thumbnails and cohesion; how many unknown faces are in none; the
    latest clustering job."""
    page = await run_blocking(request, lambda: clusters.page(offset=offset, limit=limit, min_size=min_size))
    return ClusterListOut(
        clusters=[cluster_out(r) for r in page.clusters],
        total=page.total,
        offset=page.offset,
        limit=page.limit,
        unclustered=page.unclustered,
        job=page.job.to_out() if page.job is not None else None,
    )


@router.get("/api/clusters/{cluster_id}", response_model=ClusterDetailOut, responses=errors(404, 422, 503, 504))
async def get_cluster(
    request: Request,
    cluster_id: ClusterId,
    clusters: ClustersDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="faces listed at most")] = 1000,
) -> ClusterDetailOut:
    """One cluster with its faces (id order)."""
    return cluster_detail_out(await run_blocking(request, lambda: clusters.get(cluster_id, limit=limit)))


@router.post("/api/clusters/{cluster_id}/name", response_model=SubjectOut, responses=errors(400, 404, 422, 503, 504))
async def name_cluster(
    request: Request, cluster_id: ClusterId, body: ClusterNameIn, clusters: ClustersDep
) -> SubjectOut:
    """Name the cluster: its faces get the subject (a new one, or they join an existing subject of that name) and
    the cluster is gone. Journalled: a stop half-way is finished at the next start."""
    people = get_people(request)

    def work() -> SubjectOut:
        return subject_out(people.summary(clusters.name(cluster_id, body.name)))

    return await run_blocking(request, work)


@router.post(
    "/api/clusters/{cluster_id}/merge", response_model=ClusterDetailOut, responses=errors(400, 404, 422, 503, 504)
)
async def merge_cluster(
    request: Request, cluster_id: ClusterId, body: ClusterMergeIn, clusters: ClustersDep
) -> ClusterDetailOut:
    """Merge this cluster into another (`{"into": "<cluster id>"}`): its faces join that one, and it is gone."""
    return cluster_detail_out(await run_blocking(request, lambda: clusters.merge(cluster_id, body.into)))


@router.delete(
    "/api/clusters/{cluster_id}/faces/{face_id}",
    response_model=ClusterDetailOut,
    responses=errors(400, 404, 422, 503, 504),
)
async def take_face_out(
    request: Request, cluster_id: ClusterId, face_id: str, clusters: ClustersDep
) -> ClusterDetailOut:
    """Take a face out of the cluster, for good: later clustering runs never put it back in a cluster (name it,
    or move it to a subject, by hand). Answers the cluster after (size 0 when it was its last face)."""
    return cluster_detail_out(await run_blocking(request, lambda: clusters.take_out(cluster_id, face_id)))
