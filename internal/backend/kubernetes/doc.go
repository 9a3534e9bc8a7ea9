// Package kubernetes runs engines as Pods on a Kubernetes cluster through
// client-go (SPEC §10): for each engine a PersistentVolumeClaim
// engine-data-<engine_id[:12]> holding its brain at /data, and a Pod
// engine-<engine_id> running the engine image with restartPolicy Never. It is
// the only package that imports client-go (with its test helper
// internal/kubetest).
//
// The PVC is the instance: what Create was given (image, key hash, port,
// ceilings) is kept in its bap-engine.spec annotation, and Start builds the
// Pod from it. So an engine whose Pod is deleted — stop, stop-mode sleep, a
// crash cleaned up — still exists (exited), and Start recreates its Pod on
// the same brain; Remove drops the annotation and keeps the data, Destroy
// deletes Pod and PVC. Pause has no Kubernetes counterpart: it deletes the
// Pod and marks the PVC paused, and Unpause recreates it (a cold pause: no
// memory is kept, which is why serve refuses ORCH_SLEEP_MODE=pause with this
// backend).
//
// One shared informer watches this deployment's engine Pods (label
// selector, periodic resync). It gives engine URLs (http://<pod IP>:8000)
// without an API call, lets Start and Stop wait for a Pod's state without
// polling, and reports engines that terminated on their own on Events within
// a second — only those the replica owns (Config.Owns), so that each replica
// hears of its own shards. A Pod that cannot start fails its Start with
// Kubernetes' reason: ErrImagePull and ImagePullBackOff are
// backend.ErrImageNotFound, an unschedulable Pod carries the scheduler's
// message.
//
// What does not belong here: engine state, ports, keys, policies (callers
// hand them in through backend.Spec), and anything about the cluster beyond
// the engine namespace: the package needs pods, pods/log, PVCs and events
// there, nothing else.
package kubernetes
