// Package routers shows, in its tests, that idemhttp.Middleware composes
// with the common routers: chi (Router.Use), gorilla/mux (Router.Use with
// mux.MiddlewareFunc) and the standard library's http.ServeMux (wrapping the
// mux, or a single route). Route parameters (chi.URLParam, mux.Vars,
// Request.PathValue) stay available to the handler behind the middleware,
// and so does the fence (idem.FenceFromContext).
package routers
