package ui_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/ui"
)

// benchEngines is the fleet size the engines page must stay fast with.
const benchEngines = 10000

// seedFleet inserts n engines over four products in one transaction, in a
// mix of states most fleets show.
func seedFleet(b *testing.B, s registry.Store, n int) {
	b.Helper()
	ctx := b.Context()
	var products []bap.Product
	for _, slug := range []string{"chat", "notes", "search", "voice"} {
		products = append(products, registrytest.NewProduct(b, s, func(p *bap.Product) { p.Slug = slug }))
	}
	mix := []bap.State{bap.StateRunning, bap.StateRunning, bap.StateRunning, bap.StateRunning, bap.StateRunning,
		bap.StateRunning, bap.StateSleeping, bap.StateStopped, bap.StateFailed, bap.StateProvisioning}
	base := bap.Now().Add(-30 * 24 * time.Hour)
	err := s.InTx(ctx, func(tx registry.Store) error {
		for i := range n {
			at := base.Add(time.Duration(i) * time.Minute)
			health := at.Add(time.Hour)
			e := bap.Engine{
				ID: uuid.NewString(), ProductID: products[i%len(products)].ID,
				UserID: fmt.Sprintf("user-%05d@example.com", i), Status: mix[i%len(mix)],
				Port: 10000 + i, KeyHash: registrytest.RandomKeyHash(), KeyEnc: "gAAAAA-bench",
				Image: "september-engine:2.3.0", URL: "http://127.0.0.1:" + strconv.Itoa(10000+i),
				HealthFailures: i % 4, LastHealthAt: &health, CreatedAt: at, UpdatedAt: at,
			}
			if err := registrytest.StepsOf(tx).InsertEngine(ctx, e, registry.Quota{}); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(b, err)
}

// BenchmarkEnginesPage renders the engines page of a 10,000-engine fleet:
// the server's whole work for one page (session, count and page queries,
// template), reported as the median and 95th percentile per page besides
// the mean (ns/op).
func BenchmarkEnginesPage(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) registry.Store
	}{
		{"sqlite", func(b *testing.B) registry.Store {
			s, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "registry.db"))
			require.NoError(b, err)
			b.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"postgres", func(b *testing.B) registry.Store {
			s, err := postgres.Open(b.Context(), pgtest.URL(b))
			require.NoError(b, err)
			b.Cleanup(func() { _ = s.Close() })
			return s
		}},
	}
	pages := []struct{ name, query string }{
		{"first", ""},
		{"last", "?page=200"},
		{"by-user-desc", "?sort=user&dir=desc&page=100"},
		{"failed-by-health", "?state=failed&sort=health"},
		{"search", "?q=USER-0999"},
		{"product-200-rows", "?per=200&sort=product&page=10"},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			seedFleet(b, s, benchEngines)
			h := newHarnessOn(b, s, options{})
			cookie := &http.Cookie{Name: "bap_ui_session", Value: h.signedIn(h.adminKey).sessionCookie()}
			for _, pg := range pages {
				b.Run(pg.name, func(b *testing.B) {
					var took []time.Duration
					for b.Loop() {
						req := httptest.NewRequest(http.MethodGet, ui.Path+"/engines"+pg.query, nil)
						req.AddCookie(cookie)
						rec := httptest.NewRecorder()
						began := time.Now()
						h.dash.ServeHTTP(rec, req)
						took = append(took, time.Since(began))
						if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "data-engine-id=") {
							b.Fatalf("status %d", rec.Code)
						}
					}
					slices.Sort(took)
					b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms/page-p50")
					b.ReportMetric(float64(took[len(took)*95/100].Microseconds())/1000, "ms/page-p95")
				})
			}
		})
	}
}
