package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend/kubernetes"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/testengine"
)

// kubeEnv points a cluster's replicas at a namespace of the test API
// server (through a kubeconfig file, as outside a cluster) with a test node
// running the standalone reference engine for each Pod.
func kubeEnv(t *testing.T) (func(env map[string]string), *kubetest.Node) {
	t.Helper()
	rc := kubetest.Config(t)
	ns := kubetest.Namespace(t, rc)
	kubeconfig, err := kubetest.Shared(t).Kubeconfig(t.TempDir())
	require.NoError(t, err)
	node := kubetest.StartNode(t, rc, kubetest.NodeConfig{
		Namespace: ns, Command: []string{testengine.Path(t), "engine"},
		TerminationLimit: 10 * time.Second,
	})
	return func(env map[string]string) {
		env["ORCH_ENGINE_BACKEND"] = "kubernetes"
		env["KUBECONFIG"] = kubeconfig
		env["ORCH_K8S_NAMESPACE"] = ns
		env["ORCH_ENGINE_IMAGE"] = "september-engine:k8s-test"
	}, node
}

// TestTwoReplicasOnKubernetes: two serve processes on one PostgreSQL and
// one namespace. Engines provisioned through either run as Pods carrying
// their shard; when their engines are killed on the node, each death is
// handled by exactly one replica — the holder of the engine's shard, whose
// informer reports only its own shards — and each engine is restarted once
// on its brain.
func TestTwoReplicasOnKubernetes(t *testing.T) {
	kube, node := kubeEnv(t)
	c := newCluster(t, 2, func(env map[string]string) {
		kube(env)
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "30" // deaths are the informer's to find
	})
	ctx := context.Background()
	require.Eventually(t, func() bool { return c.holder("x") != nil }, 15*time.Second, 50*time.Millisecond)
	type eng struct {
		id, key, url string
	}
	var engines []eng
	for i := range 8 {
		pr, err := c.platform(c.procs[i%2]).Provision(ctx, client.ProvisionRequest{UserID: fmt.Sprintf("k%d", i)})
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, engineAnswers(t, pr.URL, pr.APIKey))
		engines = append(engines, eng{pr.EngineID, pr.APIKey, pr.URL})
	}
	// Both replicas hold shards, and the engines fall on both.
	holders := map[string]bool{}
	for _, e := range engines {
		h := c.holder(e.id)
		require.NotNil(t, h)
		holders[h.name] = true
	}
	require.Len(t, holders, 2, "8 engines over 64 shards split between 2 replicas")

	for _, e := range engines {
		require.NoError(t, node.Kill(kubernetes.PodName(e.id)))
	}
	for _, e := range engines {
		require.Eventually(t, func() bool {
			row, ok := c.row(e.id)
			return ok && row.Status == bap.StateRunning && !row.Claim.Held() &&
				strings.Contains(strings.Join(actionStrings(c.actions(e.id)), ","), string(audit.AutoRestartSuccess))
		}, 30*time.Second, 50*time.Millisecond, "engine %s restarted", e.id)
		acts := c.actions(e.id)
		require.Equal(t, 1, count(acts, audit.EngineDied), "one replica handled the death: %v", acts)
		require.Equal(t, 1, count(acts, audit.AutoRestartSuccess), "%v", acts)
		require.Zero(t, count(acts, audit.HealthFailed), "the informer, not a probe, found it")
		row, _ := c.row(e.id)
		require.Equal(t, http.StatusOK, engineAnswers(t, row.URL, e.key), "restarted, with its key")
	}
	// Each death was logged by the holder of its shard, and only there.
	holderOf := map[string]string{}
	for _, e := range engines {
		holderOf[e.id] = c.holder(e.id).name
	}
	c.mu.Lock()
	procs := append(c.procs[:0:0], c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		b, err := os.ReadFile(p.log)
		require.NoError(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `"msg":"engine died"`) {
				continue
			}
			for id, h := range holderOf {
				if strings.Contains(line, id) {
					require.Equal(t, h, p.name, "engine %s's death handled by %s, not its shard's holder", id, p.name)
				}
			}
		}
	}
}

func actionStrings(acts []audit.Action) []string {
	out := make([]string, len(acts))
	for i, a := range acts {
		out[i] = string(a)
	}
	return out
}

func count(acts []audit.Action, a audit.Action) int {
	n := 0
	for _, x := range acts {
		if x == a {
			n++
		}
	}
	return n
}
