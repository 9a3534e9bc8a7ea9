package ui

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Page sizes of the engines table.
var perPageOptions = []int{25, 50, 100, 200}

const defaultPerPage = 50

// maxSearch bounds the user id search (user ids are at most 128 characters).
const maxSearch = bap.MaxUserIDLen

// enginesQuery is the engines table's filter, order and page, read from
// and written to the query string, so every view is a link.
type enginesQuery struct {
	State   bap.State
	Product string // product id; admins only
	Search  string
	Sort    registry.FleetSort
	Desc    bool
	Page    int // from 1
	Per     int
}

// parseEnginesQuery reads the table's query; what it cannot use falls back
// to the default rather than failing the page.
func parseEnginesQuery(q url.Values, v *viewer) enginesQuery {
	eq := enginesQuery{Sort: registry.SortCreated, Page: 1, Per: defaultPerPage}
	if st := bap.State(q.Get("state")); st.Valid() {
		eq.State = st
	}
	if v.admin {
		eq.Product = q.Get("product")
	}
	if s := strings.TrimSpace(q.Get("q")); len(s) <= maxSearch {
		eq.Search = s
	}
	if s := registry.FleetSort(q.Get("sort")); slices.Contains(registry.FleetSorts, s) {
		eq.Sort = s
	}
	eq.Desc = q.Get("dir") == "desc"
	if n, err := strconv.Atoi(q.Get("page")); err == nil && n >= 1 {
		eq.Page = n
	}
	if n, err := strconv.Atoi(q.Get("per")); err == nil && slices.Contains(perPageOptions, n) {
		eq.Per = n
	}
	return eq
}

// values writes the query back, leaving defaults out.
func (q enginesQuery) values() url.Values {
	out := url.Values{}
	if q.State != "" {
		out.Set("state", string(q.State))
	}
	if q.Product != "" {
		out.Set("product", q.Product)
	}
	if q.Search != "" {
		out.Set("q", q.Search)
	}
	if q.Sort != registry.SortCreated {
		out.Set("sort", string(q.Sort))
	}
	if q.Desc {
		out.Set("dir", "desc")
	}
	if q.Page > 1 {
		out.Set("page", strconv.Itoa(q.Page))
	}
	if q.Per != defaultPerPage {
		out.Set("per", strconv.Itoa(q.Per))
	}
	return out
}

// URL is the engines page showing q.
func (q enginesQuery) URL() string {
	if enc := q.values().Encode(); enc != "" {
		return Path + "/engines?" + enc
	}
	return Path + "/engines"
}

// column is one header of the engines table.
type column struct {
	Label string
	// SortURL, when set, orders the table by this column (toggling the
	// direction when it already does).
	SortURL string
	// ARIASort is the aria-sort value of the header ("" when not sorted).
	ARIASort string
	Numeric  bool
}

// enginesView is the body of the engines page.
type enginesView struct {
	Query       enginesQuery
	Rows        []registry.FleetEngine
	Total       int
	From, To    int
	Pages       int
	Columns     []column
	Products    []bap.Product
	ShowProduct bool
	States      []bap.State
	PerOptions  []int
	Sorts       []registry.FleetSort
	FirstURL    string
	PrevURL     string
	NextURL     string
	LastURL     string
}

// enginesPage: GET /ui/engines, the fleet's engines, filtered, sorted and
// paged in the database.
func (h *Handler) enginesPage(w http.ResponseWriter, r *http.Request, v *viewer) error {
	ctx := r.Context()
	q := parseEnginesQuery(r.URL.Query(), v)
	f := registry.FleetFilter{
		ProductID: q.Product, Status: q.State, UserID: q.Search,
		Sort: q.Sort, Desc: q.Desc, Limit: q.Per, Offset: (q.Page - 1) * q.Per,
	}
	if !v.admin {
		f.ProductID = v.product.ID
	}
	rows, total, err := h.store.ListFleet(ctx, f)
	if err != nil {
		return fmt.Errorf("list engines: %w", err)
	}
	pages := max(1, (total+q.Per-1)/q.Per)
	if q.Page > pages {
		// Past the end (the fleet shrank, or a typed URL): show the last page.
		q.Page = pages
		f.Offset = (q.Page - 1) * q.Per
		if rows, total, err = h.store.ListFleet(ctx, f); err != nil {
			return fmt.Errorf("list engines: %w", err)
		}
	}
	ev := enginesView{
		Query: q, Rows: rows, Total: total, Pages: pages, ShowProduct: v.admin,
		States: states, PerOptions: perPageOptions, Sorts: registry.FleetSorts,
	}
	if len(rows) > 0 {
		ev.From, ev.To = f.Offset+1, f.Offset+len(rows)
	}
	if v.admin {
		if ev.Products, err = h.store.ListProducts(ctx); err != nil {
			return fmt.Errorf("list products: %w", err)
		}
	}
	ev.Columns = q.columns(v.admin)
	at := func(page int) string {
		p := q
		p.Page = page
		return p.URL()
	}
	if q.Page > 1 {
		ev.FirstURL, ev.PrevURL = at(1), at(q.Page-1)
	}
	if q.Page < pages {
		ev.NextURL, ev.LastURL = at(q.Page+1), at(pages)
	}
	h.render(w, r, v, http.StatusOK, "engines", "Engines", ev)
	return nil
}

// columns are the table's headers, each sortable one linking to the table
// ordered by it (from the first page).
func (q enginesQuery) columns(withProduct bool) []column {
	col := func(label string, sort registry.FleetSort, numeric bool) column {
		c := column{Label: label, Numeric: numeric}
		if sort == "" {
			return c
		}
		next := q
		next.Page, next.Sort, next.Desc = 1, sort, false
		if q.Sort == sort {
			next.Desc = !q.Desc
			c.ARIASort = "ascending"
			if q.Desc {
				c.ARIASort = "descending"
			}
		}
		c.SortURL = next.URL()
		return c
	}
	cols := []column{col("User", registry.SortUser, false)}
	if withProduct {
		cols = append(cols, col("Product", registry.SortProduct, false))
	}
	return append(cols,
		col("State", registry.SortState, false),
		col("Version", "", false),
		col("Health failures", registry.SortFailures, true),
		col("Last health", registry.SortHealth, false),
		col("Created", registry.SortCreated, false),
	)
}
