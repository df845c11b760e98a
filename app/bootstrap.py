"""The one wiring: builds and closes the engine, heads, store, thumbnails, request batcher, FaceService, ingest
state and job manager, in order. Used by the service (app.api), the CLI's local run, benchmarks and tests."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field

from app.access import KEYS_FILE, KeyStore
from app.config import Settings
from app.engine import EngineObserver, FaceEngine, InferenceBatcher, InferenceGate, ModelPack, Runtime
from app.heads import HeadRegistry
from app.imaging import configure_pixel_limits
from app.ingest.manager import JobManager
from app.ingest.model import STATE_FILE, JobKind
from app.ingest.state import IngestState
from app.people import (
    PEOPLE_FILE,
    ClusterParams,
    Clusters,
    ClusterState,
    People,
    PeopleFaceService,
    PeopleState,
)
from app.service import FaceService
from app.store import (
    ERASURES_FILE,
    ErasureJournal,
    ThumbnailStore,
    VectorStore,
    open_store,
    other_embedded_collections,
    store_identity,
)

logger = logging.getLogger(__name__)


def load_heads(settings: Settings, pack: ModelPack) -> HeadRegistry:
    """The classifier heads, loaded beside the face models: a bad head file stops start-up like a bad pack."""
    return HeadRegistry.load(
        defaults=settings.heads,
        heads_dir=settings.heads_dir,
        genderage=pack.genderage,
        pack_name=pack.name,
        runtime=Runtime.from_settings(settings),
        batch_sizes=settings.rec_batch_sizes,
    )


def load_models(settings: Settings, gate: InferenceGate | None = None) -> tuple[FaceEngine, HeadRegistry]:
    """The face models (behind `gate`, or a new one from GPU_CONCURRENCY / GPU_ACQUIRE_TIMEOUT) and the heads."""
    gate = gate or InferenceGate(settings.gpu_concurrency, settings.gpu_acquire_timeout)
    engine = FaceEngine.from_settings(settings, gate)
    return engine, load_heads(settings, engine.pack)


@dataclass
class Services:
    settings: Settings
    engine: FaceEngine
    heads: HeadRegistry
    store: VectorStore
    thumbs: ThumbnailStore
    service: FaceService
    batcher: InferenceBatcher | None = None
    state: IngestState | None = None
    jobs: JobManager | None = None
    keys: KeyStore | None = None
    people: People | None = None
    _closer: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def backend(self) -> str:
        """The store's backend (edge, server)."""
        return self.store.backend.value

    def close(self) -> None:
        """Stop the running job first (it commits its batch and resumes at the next start), then the batcher,
        then the store (flushed). Idempotent."""
        self._closer.close()


def open_services(
    settings: Settings,
    *,
    models: tuple[FaceEngine, HeadRegistry] | None = None,
    batcher: bool = True,
    jobs: bool = True,
    state: bool = True,
    build_index: bool = True,
    observer: EngineObserver | None = None,
    keys: bool = True,
    sweep: bool = True,
) -> Services:
    """Everything a Settings describes, opened in order; on a failure half-way what was opened is closed.

    `models`: an engine and heads already loaded (tests share one per session). `batcher`: requests share
    engine batches (the service). `jobs`: background ingest jobs, resumed at once (the service). `state`: the
    ingest state (implied by `jobs`). `build_index`: build a pending HNSW index before serving (it blocks the
    process, see EdgeStore). `observer`: told of every engine call, wait, shed and drop (the service's metrics),
    installed before any job runs. `keys`: the API keys of STATE_DIR, kept up to date with changes made by other
    processes (the service). `sweep`: remove crops without a point, on a thread beside the service, when
    THUMBS_DIR is this collection's alone (see ThumbnailStore.claim)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    configure_pixel_limits(int(settings.max_megapixels * 1e6))
    engine, heads = models or load_models(settings)
    if observer is not None:
        engine.observer = observer
    closer = ExitStack()
    try:
        key_store = None
        if keys:
            key_store = KeyStore(settings.state_dir / KEYS_FILE)
            closer.callback(key_store.close)
            key_store.watch()
        store = open_store(settings, dim=engine.dim, pack=engine.fingerprint)
        closer.callback(store.close)
        if build_index and store.info().status != "green":
            store.optimize()
        thumbs = ThumbnailStore(settings.thumbs_dir)
        erasures = ErasureJournal(settings.state_dir / ERASURES_FILE)
        closer.callback(erasures.close)
        request_batcher = None
        if batcher:
            request_batcher = InferenceBatcher(engine, max_images=settings.request_batch)
            closer.callback(request_batcher.close)
        service = PeopleFaceService(  # a FaceService whose search answers say who each face is
            settings=settings,
            engine=engine,
            heads=heads,
            store=store,
            thumbs=thumbs,
            erasures=erasures,
            analyzer=request_batcher,
        )
        service.settle_thumbnails()  # before any writer starts
        people_state = PeopleState(settings.state_dir / PEOPLE_FILE)
        closer.callback(people_state.close)
        people = People(
            service=service,
            state=people_state,
            state_dir=settings.state_dir,
            collection=settings.collection_name,
            fingerprint=engine.fingerprint,
            pack=engine.pack.name,
        )
        people.finish_pending()  # renames and merges a stop interrupted, before any reader or writer
        service.people = people
        cluster_state = ClusterState(settings.state_dir / PEOPLE_FILE)
        closer.callback(cluster_state.close)
        clusters = Clusters(
            service=service,
            state=cluster_state,
            params=ClusterParams(
                min_faces=settings.cluster_min_faces,
                max_distance=settings.cluster_max_distance,
                reindex_every=settings.index_threshold,
            ),
        )
        clusters.finish_pending()  # namings and merges of clusters a stop interrupted
        people.clusters = clusters
        if sweep and thumbs.claim(store_identity(settings), alone=not other_embedded_collections(settings)):
            stop_sweep = threading.Event()
            sweeper = threading.Thread(
                target=service.sweep_orphans, args=(stop_sweep,), name="orphan-sweep", daemon=True
            )
            sweeper.start()
            closer.callback(sweeper.join)  # after stop_sweep is set, before the store closes
            closer.callback(stop_sweep.set)
        ingest_state = manager = None
        if state or jobs:
            ingest_state = IngestState(settings.state_dir / STATE_FILE)
            closer.callback(ingest_state.close)
        if jobs:
            assert ingest_state is not None
            manager = JobManager(
                service=service, state=ingest_state, settings=settings, runners={JobKind.CLUSTER: clusters.job}
            )
            clusters.jobs = manager
            closer.callback(manager.shutdown)  # before the state and the store close: the job commits first
            manager.start()  # resumes the jobs a previous run of the service left unfinished
    except BaseException:
        closer.close()
        raise
    return Services(
        settings=settings,
        engine=engine,
        heads=heads,
        store=store,
        thumbs=thumbs,
        service=service,
        batcher=request_batcher,
        state=ingest_state,
        jobs=manager,
        keys=key_store,
        people=people,
        _closer=closer,
    )
