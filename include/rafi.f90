! rafi.f90 — the rafi C API (rafi.h) for Fortran, over ISO_C_BINDING. Compile it with
! your program: mpifort rafi.f90 app.f90 $(pkg-config --libs rafi)
!
! Handles are type(c_ptr); strings end with c_null_char (rafi_cstr adds it); buffers are
! passed as c_loc(array) with their length in bytes (c_sizeof). Every function returns
! RAFI_OK or an RAFI_ERR_* code, and rafi_message() is the calling thread's last error as
! a Fortran string. docs/mpi.md has the guide and the rules (threads, buffers).
module rafi
    use, intrinsic :: iso_c_binding
    implicit none
    private :: c_strlen

    integer(c_int), parameter :: RAFI_OK = 0, RAFI_ERR_ARG = 1, RAFI_ERR_CONNECT = 2, &
        RAFI_ERR_AUTH = 3, RAFI_ERR_LEASE = 4, RAFI_ERR_EXHAUSTED = 5, RAFI_ERR_ALLOC = 6, &
        RAFI_ERR_TOO_LARGE = 7, RAFI_ERR_TRUNCATED = 8, RAFI_ERR_EXECUTOR_GONE = 9, &
        RAFI_ERR_TIMEOUT = 10, RAFI_ERR_FUNCTION = 11, RAFI_ERR_REJECTED = 12, &
        RAFI_ERR_BUSY = 13, RAFI_ERR_CANCELLED = 14, RAFI_ERR_FABRIC = 15, &
        RAFI_ERR_PROTOCOL = 16, RAFI_ERR_BUG = 17

    interface
        function rafi_connect(resource_manager, client, secret, client_out) &
                bind(C, name="rafi_connect") result(rc)
            import :: c_char, c_ptr, c_int
            character(kind=c_char), dimension(*), intent(in) :: resource_manager, client, secret
            type(c_ptr), intent(out) :: client_out
            integer(c_int) :: rc
        end function

        function rafi_connect_env(client_out) bind(C, name="rafi_connect_env") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(out) :: client_out
            integer(c_int) :: rc
        end function

        function rafi_disconnect(client) bind(C, name="rafi_disconnect") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(inout) :: client
            integer(c_int) :: rc
        end function

        function rafi_lease_create(client, cores, duration_s, lease_out) &
                bind(C, name="rafi_lease_create") result(rc)
            import :: c_ptr, c_int, c_double
            type(c_ptr), value :: client
            integer(c_int), value :: cores
            real(c_double), value :: duration_s
            type(c_ptr), intent(out) :: lease_out
            integer(c_int) :: rc
        end function

        function rafi_lease_info(lease, id, cores, nodes) bind(C, name="rafi_lease_info") &
                result(rc)
            import :: c_ptr, c_int, c_int64_t
            type(c_ptr), value :: lease
            integer(c_int64_t), intent(out) :: id
            integer(c_int), intent(out) :: cores, nodes
            integer(c_int) :: rc
        end function

        function rafi_lease_release(lease) bind(C, name="rafi_lease_release") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(inout) :: lease
            integer(c_int) :: rc
        end function

        function rafi_lease_free(lease) bind(C, name="rafi_lease_free") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(inout) :: lease
            integer(c_int) :: rc
        end function

        function rafi_alloc_create(lease, functions, alloc_out) &
                bind(C, name="rafi_alloc_create") result(rc)
            import :: c_ptr, c_char, c_int
            type(c_ptr), value :: lease
            character(kind=c_char), dimension(*), intent(in) :: functions
            type(c_ptr), intent(out) :: alloc_out
            integer(c_int) :: rc
        end function

        function rafi_alloc_info(alloc, max_input, workers) bind(C, name="rafi_alloc_info") &
                result(rc)
            import :: c_ptr, c_size_t, c_int
            type(c_ptr), value :: alloc
            integer(c_size_t), intent(out) :: max_input
            integer(c_int), intent(out) :: workers
            integer(c_int) :: rc
        end function

        function rafi_function(alloc, name, function) bind(C, name="rafi_function") result(rc)
            import :: c_ptr, c_char, c_int
            type(c_ptr), value :: alloc
            character(kind=c_char), dimension(*), intent(in) :: name
            integer(c_int), intent(out) :: function
            integer(c_int) :: rc
        end function

        function rafi_alloc_free(alloc) bind(C, name="rafi_alloc_free") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(inout) :: alloc
            integer(c_int) :: rc
        end function

        function rafi_invoke(alloc, function, input, input_len, output, capacity, output_len) &
                bind(C, name="rafi_invoke") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), value :: alloc, input, output
            integer(c_int), value :: function
            integer(c_size_t), value :: input_len, capacity
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function

        ! Registered input memory: fill it through c_f_pointer(rafi_buffer_data(buffer), ...)
        ! and invoke from it without a copy.
        function rafi_lease_renew(lease, duration_s) bind(C, name="rafi_lease_renew") &
                result(rc)
            import :: c_ptr, c_int, c_double
            type(c_ptr), value :: lease
            real(c_double), value :: duration_s
            integer(c_int) :: rc
        end function

        function rafi_alloc_renew(alloc, lease) bind(C, name="rafi_alloc_renew") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), value :: alloc, lease
            integer(c_int) :: rc
        end function

        function rafi_buffer_create(alloc, size, buffer) bind(C, name="rafi_buffer_create") &
                result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), value :: alloc
            integer(c_size_t), value :: size
            type(c_ptr), intent(out) :: buffer
            integer(c_int) :: rc
        end function

        function rafi_buffer_data(buffer) bind(C, name="rafi_buffer_data") result(data)
            import :: c_ptr
            type(c_ptr), value :: buffer
            type(c_ptr) :: data
        end function

        function rafi_buffer_size(buffer) bind(C, name="rafi_buffer_size") result(size)
            import :: c_ptr, c_size_t
            type(c_ptr), value :: buffer
            integer(c_size_t) :: size
        end function

        function rafi_invoke_buffer(alloc, function, buffer, offset, len, output, capacity, &
                output_len) bind(C, name="rafi_invoke_buffer") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), value :: alloc, buffer, output
            integer(c_int), value :: function
            integer(c_size_t), value :: offset, len, capacity
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function

        function rafi_buffer_free(buffer) bind(C, name="rafi_buffer_free") result(rc)
            import :: c_ptr, c_int
            type(c_ptr), intent(inout) :: buffer
            integer(c_int) :: rc
        end function

        function rafi_invoke_start(alloc, function, input, input_len, output, capacity, &
                request) bind(C, name="rafi_invoke_start") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), value :: alloc, input, output
            integer(c_int), value :: function
            integer(c_size_t), value :: input_len, capacity
            type(c_ptr), intent(out) :: request
            integer(c_int) :: rc
        end function

        function rafi_test(request, done, output_len) bind(C, name="rafi_test") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), intent(inout) :: request
            integer(c_int), intent(out) :: done
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function

        function rafi_wait(request, output_len) bind(C, name="rafi_wait") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), intent(inout) :: request
            integer(c_size_t), intent(out) :: output_len
            integer(c_int) :: rc
        end function

        function rafi_waitall(count, requests, output_lens, statuses) &
                bind(C, name="rafi_waitall") result(rc)
            import :: c_ptr, c_int, c_size_t
            integer(c_size_t), value :: count
            type(c_ptr), dimension(*), intent(inout) :: requests
            integer(c_size_t), dimension(*), intent(out) :: output_lens
            integer(c_int), dimension(*), intent(out) :: statuses
            integer(c_int) :: rc
        end function

        function rafi_invoke_many(alloc, function, count, inputs, input_size, outputs, &
                output_size, output_lens, statuses) bind(C, name="rafi_invoke_many") result(rc)
            import :: c_ptr, c_int, c_size_t
            type(c_ptr), value :: alloc, inputs, outputs
            integer(c_int), value :: function
            integer(c_size_t), value :: count, input_size, output_size
            integer(c_size_t), dimension(*), intent(out) :: output_lens
            integer(c_int), dimension(*), intent(out) :: statuses
            integer(c_int) :: rc
        end function

        function rafi_last_error_c() bind(C, name="rafi_last_error") result(message)
            import :: c_ptr
            type(c_ptr) :: message
        end function

        function rafi_strerror_c(code) bind(C, name="rafi_strerror") result(message)
            import :: c_ptr, c_int
            integer(c_int), value :: code
            type(c_ptr) :: message
        end function

        function c_strlen(s) bind(C, name="strlen") result(n)
            import :: c_ptr, c_size_t
            type(c_ptr), value :: s
            integer(c_size_t) :: n
        end function
    end interface

contains

    !> `text` without trailing blanks, NUL-terminated for the C calls.
    function rafi_cstr(text) result(c)
        character(len=*), intent(in) :: text
        character(kind=c_char, len=:), allocatable :: c
        c = trim(text) // c_null_char
    end function

    !> The calling thread's last error message.
    function rafi_message() result(text)
        character(len=:), allocatable :: text
        text = from_c(rafi_last_error_c())
    end function

    !> The fixed description of a status code.
    function rafi_strerror(code) result(text)
        integer(c_int), intent(in) :: code
        character(len=:), allocatable :: text
        text = from_c(rafi_strerror_c(code))
    end function

    function from_c(p) result(text)
        type(c_ptr), intent(in) :: p
        character(len=:), allocatable :: text
        character(kind=c_char), pointer :: chars(:)
        integer :: i, n
        n = int(c_strlen(p))
        call c_f_pointer(p, chars, [n])
        allocate(character(len=n) :: text)
        do i = 1, n
            text(i:i) = chars(i)
        end do
    end function
end module rafi
