// Package helm_test renders the bap-engine chart with helm's own template
// engine and applies every object it makes to a real kube-apiserver
// (internal/kubetest), so that the chart is valid where it counts: schema,
// defaulting, RBAC and admission of the Kubernetes release the tests run.
package helm_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m, testmain.After(kubetest.Stop))) }

const chartDir = "bap-engine"

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	require.NoError(t, err)
	return c
}

// render renders the chart as `helm template` would for a release named
// "bap" in namespace ns.
func render(c *chart.Chart, ns string, values map[string]any) (map[string]string, error) {
	caps := chartutil.DefaultCapabilities.Copy()
	v := strings.TrimPrefix(kubetest.Version, "v")
	caps.KubeVersion = chartutil.KubeVersion{Version: kubetest.Version, Major: "1", Minor: strings.Split(v, ".")[1]}
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, caps.KubeVersion.String()) {
		return nil, fmt.Errorf("chart kubeVersion %q excludes %s", c.Metadata.KubeVersion, kubetest.Version)
	}
	vals, err := chartutil.ToRenderValues(c, values, chartutil.ReleaseOptions{Name: "bap", Namespace: ns, IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	return engine.Render(c, vals)
}

// objects splits rendered templates into objects, NOTES.txt aside.
func objects(t *testing.T, files map[string]string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") || strings.HasPrefix(name, "_") || strings.Contains(name, "/_") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(files[name]) {
			var m map[string]any
			require.NoError(t, yaml.Unmarshal([]byte(doc), &m), "%s is YAML", name)
			if len(m) == 0 {
				continue
			}
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
	return out
}

// TestChartAppliesToARealAPIServer renders the chart with an engine
// namespace apart from the release's and a product namespace, applies every
// object (server-side apply, so the apiserver validates and defaults each
// one), then checks what the objects grant and set.
func TestChartAppliesToARealAPIServer(t *testing.T) {
	cfg := kubetest.Config(t)
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	ctx := context.Background()

	releaseNS := kubetest.Namespace(t, cfg)
	enginesNS := kubetest.Namespace(t, cfg)
	productNS := kubetest.Namespace(t, cfg)

	files, err := render(loadChart(t), releaseNS, map[string]any{
		"keys":          map[string]any{"existingSecret": "bap-keys"},
		"database":      map[string]any{"existingSecret": "bap-db"},
		"engines":       map[string]any{"namespace": enginesNS, "storageClass": "fast-rwo"},
		"networkPolicy": map[string]any{"productNamespaces": []any{productNS}},
		"config":        map[string]any{"ORCH_HEALTH_CHECK_INTERVAL_S": 15},
	})
	require.NoError(t, err)
	objs := objects(t, files)

	kinds := apply(t, cfg, objs)
	slices.Sort(kinds)
	assert.Equal(t, []string{"Deployment", "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"}, kinds)

	// The Deployment as the apiserver stored it.
	dep, err := cs.AppsV1().Deployments(releaseNS).Get(ctx, "bap-bap-engine", metav1.GetOptions{})
	require.NoError(t, err)
	assert.EqualValues(t, 2, *dep.Spec.Replicas)
	c := dep.Spec.Template.Spec.Containers[0]
	assert.Equal(t, "/livez", c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	assert.False(t, c.Resources.Requests.Memory().IsZero())
	assert.False(t, c.Resources.Limits.Memory().IsZero())
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	assert.Equal(t, "kubernetes", env["ORCH_ENGINE_BACKEND"].Value)
	assert.Equal(t, enginesNS, env["ORCH_K8S_NAMESPACE"].Value)
	assert.Equal(t, "fast-rwo", env["ORCH_K8S_STORAGE_CLASS"].Value)
	assert.Equal(t, "1Gi", env["ORCH_K8S_VOLUME_SIZE"].Value)
	assert.Equal(t, "stop", env["ORCH_SLEEP_MODE"].Value)
	assert.Equal(t, "15", env["ORCH_HEALTH_CHECK_INTERVAL_S"].Value)
	for name, secret := range map[string]string{"ORCH_MASTER_KEY": "bap-keys", "ORCH_ADMIN_KEY": "bap-keys", "ORCH_DATABASE_URL": "bap-db"} {
		e := env[name]
		assert.Empty(t, e.Value, "%s is not written in the Deployment", name)
		require.NotNil(t, e.ValueFrom, name)
		require.NotNil(t, e.ValueFrom.SecretKeyRef, name)
		assert.Equal(t, secret, e.ValueFrom.SecretKeyRef.Name, name)
	}
	assert.Equal(t, "bap-bap-engine", dep.Spec.Template.Spec.ServiceAccountName)
	assertSelects(t, dep)

	// The Role grants the engine namespace's pods, pods/log, PVCs and
	// events, and nothing else: asked of the real RBAC authorizer.
	sa := "system:serviceaccount:" + releaseNS + ":bap-bap-engine"
	can := func(ns, verb, resource, sub string) bool {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               sa,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Resource: resource, Subresource: sub},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		return r.Status.Allowed
	}
	for _, ok := range [][3]string{
		{"create", "pods", ""}, {"delete", "pods", ""}, {"watch", "pods", ""}, {"get", "pods", "log"},
		{"create", "persistentvolumeclaims", ""}, {"delete", "persistentvolumeclaims", ""}, {"list", "events", ""},
		{"patch", "persistentvolumeclaims", ""}, {"update", "persistentvolumeclaims", ""},
	} {
		assert.True(t, can(enginesNS, ok[0], ok[1], ok[2]), "may %s %s/%s in the engine namespace", ok[0], ok[1], ok[2])
	}
	for _, no := range [][3]string{
		{"get", "secrets", ""}, {"create", "pods", "exec"}, {"update", "pods", ""}, {"create", "services", ""},
		{"list", "configmaps", ""}, {"create", "deployments", ""},
	} {
		assert.False(t, can(enginesNS, no[0], no[1], no[2]), "may not %s %s/%s", no[0], no[1], no[2])
	}
	assert.False(t, can(releaseNS, "create", "pods", ""), "no rights outside the engine namespace")
	assert.False(t, can(productNS, "list", "pods", ""), "no rights outside the engine namespace")
	assert.False(t, can("", "list", "nodes", ""), "no cluster-wide rights")

	// The NetworkPolicy selects this deployment's engine pods and admits
	// the orchestrator's pods and the product's namespace.
	np, err := cs.NetworkingV1().NetworkPolicies(enginesNS).Get(ctx, "bap-bap-engine-engines", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"bap-engine.managed": "true", "bap-engine.deployment": "bap"}, np.Spec.PodSelector.MatchLabels)
	require.Len(t, np.Spec.Ingress, 1)
	from := np.Spec.Ingress[0].From
	require.Len(t, from, 2)
	assert.Equal(t, releaseNS, from[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])
	assert.Equal(t, dep.Spec.Selector.MatchLabels, from[0].PodSelector.MatchLabels)
	assert.Equal(t, productNS, from[1].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])
	assert.Nil(t, from[1].PodSelector)

	pdb, err := cs.PolicyV1().PodDisruptionBudgets(releaseNS).Get(ctx, "bap-bap-engine", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, dep.Spec.Selector.MatchLabels, pdb.Spec.Selector.MatchLabels)
	assert.Equal(t, 1, pdb.Spec.MinAvailable.IntValue())
}

// apply server-side applies each object, as `helm install` would create
// it, and returns their kinds. Strict field validation makes a misspelt
// field an error rather than a warning.
func apply(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) []string {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	require.NoError(t, err)
	groups, err := restmapper.GetAPIGroupResources(dc)
	require.NoError(t, err)
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	ctx := context.Background()
	var kinds []string
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		kinds = append(kinds, gvk.Kind)
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		require.NoError(t, err, "%s is a kind the apiserver serves", gvk)
		require.Equal(t, meta.RESTScopeNameNamespace, mapping.Scope.Name(), "%s %s is namespaced: the chart makes nothing cluster-wide", gvk.Kind, obj.GetName())
		ns := obj.GetNamespace()
		require.NotEmpty(t, ns, "%s %s names its namespace", gvk.Kind, obj.GetName())
		body, err := obj.MarshalJSON()
		require.NoError(t, err)
		_, err = dyn.Resource(mapping.Resource).Namespace(ns).Patch(ctx, obj.GetName(), types.ApplyPatchType, body,
			metav1.PatchOptions{FieldManager: "bap-engine-chart-test", Force: ptr(true), FieldValidation: "Strict"})
		require.NoError(t, err, "the apiserver accepts %s %s/%s", gvk.Kind, ns, obj.GetName())
	}
	return kinds
}

// TestChartDefaultsApply: with nothing but the two Secrets named, the
// engines share the release's namespace and everything still applies.
func TestChartDefaultsApply(t *testing.T) {
	cfg := kubetest.Config(t)
	ns := kubetest.Namespace(t, cfg)
	files, err := render(loadChart(t), ns, map[string]any{
		"keys":     map[string]any{"existingSecret": "bap-keys"},
		"database": map[string]any{"existingSecret": "bap-db"},
	})
	require.NoError(t, err)
	objs := objects(t, files)
	for _, obj := range objs {
		assert.Equal(t, ns, obj.GetNamespace(), "%s %s", obj.GetKind(), obj.GetName())
	}
	assert.Len(t, apply(t, cfg, objs), 7)

	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	np, err := cs.NetworkingV1().NetworkPolicies(ns).Get(context.Background(), "bap-bap-engine-engines", metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, np.Spec.Ingress, 1)
	assert.Len(t, np.Spec.Ingress[0].From, 1, "only the orchestrator, when no product namespace is named")
}

// assertSelects: the Service and the Deployment's selector pick the pods
// the Deployment makes.
func assertSelects(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	for k, v := range dep.Spec.Selector.MatchLabels {
		assert.Equal(t, v, dep.Spec.Template.Labels[k], "the selector matches the pod template's label %s", k)
	}
}

// TestChartRefusesWhatCannotWork: missing Secrets, settings the chart owns
// repeated in config, and pause sleep are refused at render time with a
// message naming the value.
func TestChartRefusesWhatCannotWork(t *testing.T) {
	c := loadChart(t)
	base := func() map[string]any {
		return map[string]any{
			"keys":     map[string]any{"existingSecret": "k"},
			"database": map[string]any{"existingSecret": "d"},
		}
	}
	_, err := render(c, "ns", base())
	require.NoError(t, err)

	for name, tc := range map[string]struct {
		change func(map[string]any)
		want   string
	}{
		"no key secret":      {func(v map[string]any) { delete(v, "keys") }, "keys.existingSecret"},
		"no database secret": {func(v map[string]any) { delete(v, "database") }, "database.existingSecret"},
		"key in config": {func(v map[string]any) {
			v["config"] = map[string]any{"ORCH_MASTER_KEY": "plaintext"}
		}, "config.ORCH_MASTER_KEY is set by the chart"},
		"not an ORCH setting":        {func(v map[string]any) { v["config"] = map[string]any{"PATH": "/x"} }, "PATH"},
		"pause sleep":                {func(v map[string]any) { v["engines"] = map[string]any{"sleepMode": "pause"} }, "pause is refused"},
		"unknown sleep mode":         {func(v map[string]any) { v["engines"] = map[string]any{"sleepMode": "nap"} }, "sleepMode"},
		"replicas not a number":      {func(v map[string]any) { v["replicaCount"] = "two" }, "replicaCount"},
		"volume size not a quantity": {func(v map[string]any) { v["engines"] = map[string]any{"volumeSize": "lots"} }, "volumeSize"},
	} {
		t.Run(name, func(t *testing.T) {
			v := base()
			tc.change(v)
			_, err := render(c, "ns", v)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func ptr[T any](v T) *T { return &v }
