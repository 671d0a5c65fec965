//! The stages, started and wound down together: the sink (and its `deliveries` thread), the
//! inference threads, the shadow model, the model reloader. The source is the coordinator's
//! (its consumer is polled by the main thread).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;

use super::startup::Topology;
use super::WorkerConfig;
use crate::app::shutdown::Shutdown;
use crate::batching::{self, BatchQueue, ChunkSender};
use crate::error::{Error, Result};
use crate::inference;
use crate::kafka::sink::{ShadowSink, Sink, SinkConfig};
use crate::model::live::{self, LiveModel, Models, Reload, Reloader};
use crate::obs::metrics::{Metrics, Role};
use crate::pipeline::{Budget, Output, Shadow};

/// Sets its flag when dropped: a helper thread that checks the flag ends with the scope that
/// started it, on early returns too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(name, e))
}

/// Waits for `h` up to `deadline`; joins it if it ended.
fn join_by(h: JoinHandle<()>, deadline: Instant) {
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        let _ = h.join();
    }
}

/// The running stages.
pub struct Pipeline {
    pub sink: Arc<Sink>,
    pub budget: Arc<Budget>,
    inference: Vec<JoinHandle<()>>,
    deliveries: (JoinHandle<()>, StopOnDrop),
    shadow: Option<(JoinHandle<()>, Arc<ShadowSink>)>,
    reloader: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the sink, its deliveries thread, the shadow model and the inference threads;
    /// returns them and the channel's sending side, for the source.
    pub fn start(
        cfg: &WorkerConfig,
        topology: Topology,
        producer: &ClientConfig,
        models: &Arc<Models>,
        metrics: &Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Result<(Pipeline, ChunkSender)> {
        let sink = Arc::new(Sink::new(
            SinkConfig {
                output_topic: cfg.output_topic.clone(),
                dlq_topic: cfg.dlq_topic.clone(),
                source_topic: cfg.input_topic.clone(),
                same_partition: topology.same_partition,
                guarantee: cfg.guarantee,
                client: producer.clone(),
                transactional_id_prefix: cfg
                    .transactional_id_prefix
                    .clone()
                    .unwrap_or_else(|| cfg.group_id.clone()),
                limits: topology.limits,
            },
            metrics.clone(),
            shutdown.clone(),
        )?);
        // Acknowledgements are served by the inference threads after each batch; this thread
        // serves them when no batch comes (idle, draining, shutting down).
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let deliveries = {
            let (sink, stop) = (sink.clone(), stop.0.clone());
            spawn("deliveries", move || sink.serve_deliveries_until(&stop))?
        };
        let (shadow_stage, shadow) = match topology.shadow {
            Some((model, topic, same)) => start_shadow(model, topic, same, producer, metrics)?,
            None => (None, None),
        };
        let (tx, rx, doorbell) = batching::channel(cfg.channel_capacity);
        // The inference threads gather their batches from the chunk channel themselves.
        let queue = Arc::new(BatchQueue::new(rx, doorbell, cfg.policy));
        let output = sink.clone() as Arc<dyn Output>;
        let inference = start_inference(cfg, &queue, &output, shadow_stage, models, metrics)?;
        let pipeline = Pipeline {
            sink,
            budget: Budget::new(cfg.max_in_flight_bytes),
            inference,
            deliveries: (deliveries, stop),
            shadow,
            reloader: None,
        };
        Ok((pipeline, tx))
    }

    /// With `--model-dir`: watches it for new models (and SIGHUP), swapping them in between
    /// chunks once validated.
    pub fn watch_models(
        &mut self,
        cfg: &WorkerConfig,
        models: &Arc<Models>,
        metrics: &Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let Some(dir) = cfg.model_dir.as_ref().filter(|_| !cfg.passthrough) else {
            return Ok(());
        };
        let (m, st, live) = (metrics.clone(), shutdown.clone(), models.clone());
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
            .map_err(|e| Error::Config(format!("cannot install the SIGHUP handler: {e}")))?;
        tracing::info!(
            dir = %dir.display(),
            poll_ms = cfg.model_poll.as_millis() as u64,
            "watching the model directory (SIGHUP reloads at once)"
        );
        let on_reload = move |outcome: &Reload| match outcome {
            Reload::Swapped { from, to } => {
                tracing::info!(from, to, "model reloaded");
                m.model_swapped(from, to);
                let live = live.current();
                m.watch_drift(Role::Live, &live.version, live.drift.clone());
            }
            Reload::Rejected(why) => {
                tracing::error!("model reload rejected, the live model keeps serving: {why}");
                m.model_rejected();
            }
            Reload::Unchanged => {}
        };
        self.reloader = Some(live::spawn_reloader(
            Reloader::new(dir.clone(), models.clone()),
            cfg.model_poll,
            hup,
            move || st.is_requested(),
            on_reload,
        )?);
        Ok(())
    }

    /// A stage thread ended while the worker runs: something went wrong.
    pub fn any_stopped(&self) -> bool {
        self.inference.iter().any(JoinHandle::is_finished) || self.deliveries.0.is_finished()
    }

    /// Winds the stages down once the source has stopped and closed its channel: the inference
    /// threads end when the channel is drained, then outputs are flushed and their reports
    /// served. Bounded, like everything on the way out.
    pub fn drain(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for h in self.inference {
            join_by(h, deadline);
        }
        if let Err(e) = self.sink.flush(Duration::from_secs(5)) {
            tracing::warn!("producer flush: {e}");
        }
        self.sink.serve_deliveries();
        let (deliveries, stop) = self.deliveries;
        drop(stop);
        deliveries.thread().unpark();
        let _ = deliveries.join();
        if let Some((handle, out)) = self.shadow {
            // The inference threads are gone, so the shadow queue is closed: what it holds is
            // scored (bounded: a few batches), then the thread ends.
            join_by(handle, Instant::now() + Duration::from_secs(5));
            out.flush(Duration::from_secs(2));
        }
        if let Some(h) = self.reloader {
            // It checks the stop flag every 100 ms; a load in progress finishes first.
            let _ = h.join();
        }
    }
}

type ShadowParts = (
    Option<Arc<dyn Shadow>>,
    Option<(JoinHandle<()>, Arc<ShadowSink>)>,
);

fn start_shadow(
    model: LiveModel,
    topic: String,
    same_partition: bool,
    producer: &ClientConfig,
    metrics: &Arc<Metrics>,
) -> Result<ShadowParts> {
    let out = Arc::new(ShadowSink::new(
        producer,
        topic,
        same_partition,
        metrics.clone(),
    )?);
    metrics.watch_drift(Role::Shadow, &model.version, model.drift.clone());
    let (stage, handle) = inference::shadow::start(model, out.clone(), metrics.clone(), 8)?;
    Ok((Some(stage), Some((handle, out))))
}

/// Starts the inference threads. Each builds its own model state (it is not `Send`) and
/// reports back, so a model problem fails start-up rather than a thread.
fn start_inference(
    cfg: &WorkerConfig,
    queue: &Arc<BatchQueue>,
    output: &Arc<dyn Output>,
    shadow: Option<Arc<dyn Shadow>>,
    models: &Arc<Models>,
    metrics: &Arc<Metrics>,
) -> Result<Vec<JoinHandle<()>>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(cfg.inference_threads);
    let mut threads = Vec::with_capacity(cfg.inference_threads);
    for i in 0..cfg.inference_threads {
        let (queue, out, m, model, ready, shadow) = (
            queue.clone(),
            output.clone(),
            metrics.clone(),
            models.current(),
            ready_tx.clone(),
            shadow.clone(),
        );
        threads.push(spawn(&format!("inference-{i}"), move || {
            let session = match model.classifier.session() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            inference::run((model, session), &queue, out, shadow, &m);
        })?);
    }
    drop(ready_tx);
    for _ in 0..cfg.inference_threads {
        ready_rx
            .recv()
            .map_err(|_| Error::Model("an inference thread died at start-up".into()))??;
    }
    Ok(threads)
}
