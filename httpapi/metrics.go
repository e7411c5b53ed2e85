package httpapi

import (
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// RequestObserver is told about every answered request, for metrics. route
// is the route template ("/images/:id") or "unmatched", never the raw path,
// so that label values stay few.
type RequestObserver interface {
	ObserveHTTP(route, method string, status int, d time.Duration)
}

// observeRequests reports each request to o once the response's status is
// final. It runs outside base, which renders errors and recovers panics.
// Routes are read from e at the first request, when all are registered.
func observeRequests(o RequestObserver, e *echo.Echo) echo.MiddlewareFunc {
	routes := sync.OnceValue(func() map[string]bool { return routeSet(e) })
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			route := c.Path()
			if !routes()[route] {
				route = "unmatched"
			}
			method := c.Request().Method
			switch method {
			case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
				http.MethodPatch, http.MethodDelete, http.MethodOptions:
			default:
				method = "OTHER"
			}
			o.ObserveHTTP(route, method, c.Response().Status, time.Since(start))
			return err
		}
	}
}

// routeSet is the set of route templates registered on e.
func routeSet(e *echo.Echo) map[string]bool {
	set := map[string]bool{}
	for _, r := range e.Routes() {
		set[r.Path] = true
	}
	return set
}
